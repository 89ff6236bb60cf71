/**
 * Prometheus registry (src/server/metrics.ts, SERVING.md O2): exact exposition text for a small registry (HELP/TYPE
 * lines, `_total`, label escaping, cumulative histogram buckets with +Inf, _sum and _count, callback gauges and
 * counters); misuse is refused; the server metric set has exactly the O2 names.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Metrics, createServerMetrics } from '../../src/server/metrics.js';

test('exposition text of a small registry', () => {
  const m = new Metrics('t');
  const c = m.counter('requests', 'Requests\nseen \\ so far.', ['code']);
  const plain = m.counter('bytes_total', 'Bytes.');
  const g = m.gauge('temp', 'A gauge.');
  let calls = 0;
  m.gauge('live', 'A callback gauge.', () => ++calls * 1.5);
  m.counter('ticks', 'A callback counter.', [], () => 7);
  const h = m.histogram('latency_seconds', 'Latency.', [0.5, 0.1, 1]);
  const hl = m.histogram('sized', 'Labelled.', [1], ['kind']);

  c.inc({ code: '200' });
  c.inc({ code: '200' }, 2);
  c.inc({ code: 'a"b\\c\nd' });
  plain.inc(undefined, 10);
  g.set(5);
  g.inc();
  g.dec(3);
  h.observe(0.05);
  h.observe(0.1);
  h.observe(0.7);
  h.observe(3);
  hl.observe(0.5, { kind: 'x' });

  assert.equal(
    m.render(),
    [
      '# HELP t_requests_total Requests\\nseen \\\\ so far.',
      '# TYPE t_requests_total counter',
      't_requests_total{code="200"} 3',
      't_requests_total{code="a\\"b\\\\c\\nd"} 1',
      '# HELP t_bytes_total Bytes.',
      '# TYPE t_bytes_total counter',
      't_bytes_total 10',
      '# HELP t_temp A gauge.',
      '# TYPE t_temp gauge',
      't_temp 3',
      '# HELP t_live A callback gauge.',
      '# TYPE t_live gauge',
      't_live 1.5',
      '# HELP t_ticks_total A callback counter.',
      '# TYPE t_ticks_total counter',
      't_ticks_total 7',
      '# HELP t_latency_seconds Latency.',
      '# TYPE t_latency_seconds histogram',
      't_latency_seconds_bucket{le="0.1"} 2',
      't_latency_seconds_bucket{le="0.5"} 2',
      't_latency_seconds_bucket{le="1"} 3',
      't_latency_seconds_bucket{le="+Inf"} 4',
      't_latency_seconds_sum 3.85',
      't_latency_seconds_count 4',
      '# HELP t_sized Labelled.',
      '# TYPE t_sized histogram',
      't_sized_bucket{kind="x",le="1"} 1',
      't_sized_bucket{kind="x",le="+Inf"} 1',
      't_sized_sum{kind="x"} 0.5',
      't_sized_count{kind="x"} 1',
      '',
    ].join('\n'),
  );
  // Callback gauges are read on every scrape.
  assert.match(m.render(), /^t_live 3$/m);
});

test('unlabelled metrics start at zero; a throwing callback gives NaN', () => {
  const m = new Metrics();
  m.counter('x_total', 'X.');
  m.histogram('h', 'H.', [1]);
  m.gauge('bad', 'Bad.', () => {
    throw new Error('boom');
  });
  assert.equal(
    m.render(),
    '# HELP lmoe_x_total X.\n# TYPE lmoe_x_total counter\nlmoe_x_total 0\n' +
      '# HELP lmoe_h H.\n# TYPE lmoe_h histogram\nlmoe_h_bucket{le="1"} 0\nlmoe_h_bucket{le="+Inf"} 0\nlmoe_h_sum 0\nlmoe_h_count 0\n' +
      '# HELP lmoe_bad Bad.\n# TYPE lmoe_bad gauge\nlmoe_bad NaN\n',
  );
});

test('misuse is refused', () => {
  const m = new Metrics();
  const c = m.counter('c', 'C.', ['a']);
  assert.throws(() => c.inc({ b: '1' }), /no label "b"/);
  assert.throws(() => c.inc({ a: '1' }, -1), /cannot decrease/);
  assert.throws(() => m.counter('c_total', 'again'), /registered twice/);
  assert.throws(() => m.gauge('bad-name', 'x'), /invalid metric name/);
  assert.throws(() => m.histogram('h', 'x', [1], ['le']), /invalid label name/);
  const cb = m.counter('cb', 'x', [], () => 1);
  assert.throws(() => cb.inc(), /callback/);
  assert.throws(() => m.counter('cb2', 'x', ['a'], () => 1), /cannot have labels/);
});

test('createServerMetrics has exactly the O2 names', () => {
  const m = new Metrics('lmoe');
  const s = createServerMetrics(m, {
    running: () => 2,
    waiting: () => 3,
    kvUsage: () => 0.25,
    slotsUsed: () => 4,
    preemptions: () => 9,
  });
  s.admissionRejections.inc({ reason: 'queue_full' });
  s.clientDisconnects.inc();
  s.promptTokens.inc(undefined, 100);
  s.generationTokens.inc(undefined, 20);
  s.requestErrors.inc({ type: 'server_error' });
  s.requestSuccess.inc({ finish_reason: 'stop' });
  s.timeToFirstToken.observe(0.2);
  s.interTokenLatency.observe(0.01);
  s.e2eRequestLatency.observe(1.5);
  s.queueTime.observe(0.001);
  const text = m.render();
  const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((x) => `${x[1]} ${x[2]}`);
  assert.deepEqual(types, [
    'lmoe_requests_running gauge',
    'lmoe_requests_waiting gauge',
    'lmoe_kv_cache_usage_ratio gauge',
    'lmoe_linear_state_slots_used gauge',
    'lmoe_preemptions_total counter',
    'lmoe_admission_rejections_total counter',
    'lmoe_client_disconnects_total counter',
    'lmoe_prompt_tokens_total counter',
    'lmoe_generation_tokens_total counter',
    'lmoe_request_errors_total counter',
    'lmoe_request_success_total counter',
    'lmoe_time_to_first_token_seconds histogram',
    'lmoe_inter_token_latency_seconds histogram',
    'lmoe_e2e_request_latency_seconds histogram',
    'lmoe_queue_time_seconds histogram',
  ]);
  for (const line of [
    'lmoe_requests_running 2',
    'lmoe_requests_waiting 3',
    'lmoe_kv_cache_usage_ratio 0.25',
    'lmoe_linear_state_slots_used 4',
    'lmoe_preemptions_total 9',
    'lmoe_admission_rejections_total{reason="queue_full"} 1',
    'lmoe_client_disconnects_total 1',
    'lmoe_prompt_tokens_total 100',
    'lmoe_generation_tokens_total 20',
    'lmoe_request_errors_total{type="server_error"} 1',
    'lmoe_request_success_total{finish_reason="stop"} 1',
    'lmoe_time_to_first_token_seconds_bucket{le="0.001"} 0',
    'lmoe_time_to_first_token_seconds_bucket{le="0.25"} 1',
    'lmoe_queue_time_seconds_bucket{le="0.001"} 1',
    'lmoe_e2e_request_latency_seconds_bucket{le="+Inf"} 1',
    'lmoe_e2e_request_latency_seconds_bucket{le="60"} 1',
    'lmoe_inter_token_latency_seconds_count 1',
  ]) {
    assert.ok(text.split('\n').includes(line), line);
  }
  // Without an engine callback, preemptions is an ordinary counter.
  const m2 = new Metrics();
  const s2 = createServerMetrics(m2, { running: () => 0, waiting: () => 0, kvUsage: () => 0, slotsUsed: () => 0 });
  s2.preemptions.inc();
  assert.match(m2.render(), /^lmoe_preemptions_total 1$/m);
});
