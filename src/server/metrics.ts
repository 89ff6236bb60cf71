/**
 * A minimal Prometheus registry (text exposition format 0.0.4) and the server's metric set (SERVING.md O2).
 *
 * Hand-written rather than a client library: a dozen metrics do not justify a dependency. What it does:
 *  - every name takes the namespace prefix (`lmoe_`), counters end in `_total`, durations are in seconds;
 *  - `# HELP` / `# TYPE` lines, label values escaped (`\\`, `\"`, `\n`), help text escaped (`\\`, `\n`);
 *  - histograms write cumulative `_bucket{le="..."}` lines up to `+Inf`, then `_sum` and `_count`;
 *  - gauges and counters may be computed at scrape time from a callback (the scheduler and the engine already
 *    keep these numbers; copying them on every change would be another place to forget);
 *  - metrics without labels are always written (0 before the first event); labelled series appear once used.
 */

export type Labels = Readonly<Record<string, string>>;

export interface Counter {
  /** Adds `v` (≥ 0). Throws for a callback-based counter. */
  inc(labels?: Labels, v?: number): void;
}

export interface Gauge {
  set(v: number): void;
  inc(v?: number): void;
  dec(v?: number): void;
}

export interface Histogram {
  observe(v: number, labels?: Labels): void;
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeHelp(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabelValue(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Prometheus float text: integers without a fraction, `+Inf`, `-Inf`, `NaN`. */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** `{a="x",b="y"}` in the declared label order, or '' without labels. */
function labelText(names: readonly string[], labels: Labels | undefined, extra?: [string, string]): string {
  const pairs = names.map((n) => `${n}="${escapeLabelValue(labels?.[n] ?? '')}"`);
  if (extra !== undefined) pairs.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
  return pairs.length === 0 ? '' : `{${pairs.join(',')}}`;
}

function seriesKey(names: readonly string[], labels: Labels | undefined): string {
  return JSON.stringify(names.map((n) => labels?.[n] ?? ''));
}

function checkLabels(names: readonly string[], labels: Labels | undefined, metric: string): void {
  if (labels === undefined) return;
  for (const k of Object.keys(labels)) {
    if (!names.includes(k)) throw new Error(`metric ${metric} has no label ${JSON.stringify(k)}`);
  }
}

/** Calls a scrape-time callback; a throwing callback gives NaN rather than breaking the whole scrape. */
function collect(fn: () => number): number {
  try {
    return fn();
  } catch {
    return NaN;
  }
}

interface Family {
  render(out: string[]): void;
}

export class Metrics {
  readonly #families: Family[] = [];
  readonly #names = new Set<string>();

  constructor(readonly ns = 'lmoe') {}

  #register(name: string, labelNames: readonly string[]): string {
    const full = this.ns === '' ? name : `${this.ns}_${name}`;
    if (!NAME_RE.test(full)) throw new Error(`invalid metric name ${JSON.stringify(full)}`);
    if (this.#names.has(full)) throw new Error(`metric ${full} is registered twice`);
    for (const l of labelNames) {
      if (!LABEL_RE.test(l) || l.startsWith('__') || l === 'le') throw new Error(`invalid label name ${JSON.stringify(l)}`);
    }
    this.#names.add(full);
    return full;
  }

  /**
   * A counter. `_total` is appended to the name when missing. With `value`, the counter is read from the callback
   * at scrape time (it must never decrease) and has no labels.
   */
  counter(name: string, help: string, labelNames: readonly string[] = [], value?: () => number): Counter {
    const full = this.#register(name.endsWith('_total') ? name : `${name}_total`, labelNames);
    if (value !== undefined && labelNames.length > 0) throw new Error(`callback counter ${full} cannot have labels`);
    const series = new Map<string, { labels: Labels | undefined; v: number }>();
    if (labelNames.length === 0 && value === undefined) series.set(seriesKey([], undefined), { labels: undefined, v: 0 });
    this.#families.push({
      render(out) {
        out.push(`# HELP ${full} ${escapeHelp(help)}`, `# TYPE ${full} counter`);
        if (value !== undefined) {
          out.push(`${full} ${formatValue(collect(value))}`);
          return;
        }
        for (const s of series.values()) out.push(`${full}${labelText(labelNames, s.labels)} ${formatValue(s.v)}`);
      },
    });
    return {
      inc(labels?: Labels, v = 1): void {
        if (value !== undefined) throw new Error(`counter ${full} is computed from a callback`);
        if (!(v >= 0)) throw new Error(`counter ${full} cannot decrease (inc by ${v})`);
        checkLabels(labelNames, labels, full);
        const key = seriesKey(labelNames, labels);
        const s = series.get(key);
        if (s === undefined) series.set(key, { labels: labels === undefined ? undefined : { ...labels }, v });
        else s.v += v;
      },
    };
  }

  /** A gauge without labels; with `value`, it is read from the callback at scrape time and `set` is ignored. */
  gauge(name: string, help: string, value?: () => number): Gauge {
    const full = this.#register(name, []);
    let v = 0;
    this.#families.push({
      render(out) {
        out.push(`# HELP ${full} ${escapeHelp(help)}`, `# TYPE ${full} gauge`);
        out.push(`${full} ${formatValue(value === undefined ? v : collect(value))}`);
      },
    });
    return {
      set(x: number): void {
        v = x;
      },
      inc(d = 1): void {
        v += d;
      },
      dec(d = 1): void {
        v -= d;
      },
    };
  }

  /** A histogram with the given upper bounds (sorted and deduplicated; `+Inf` is implicit). */
  histogram(name: string, help: string, buckets: readonly number[], labelNames: readonly string[] = []): Histogram {
    const full = this.#register(name, labelNames);
    const bounds = [...new Set(buckets.filter((b) => Number.isFinite(b)))].sort((a, b) => a - b);
    interface Series {
      labels: Labels | undefined;
      counts: number[];
      sum: number;
      count: number;
    }
    const fresh = (labels: Labels | undefined): Series => ({ labels, counts: bounds.map(() => 0), sum: 0, count: 0 });
    const series = new Map<string, Series>();
    if (labelNames.length === 0) series.set(seriesKey([], undefined), fresh(undefined));
    this.#families.push({
      render(out) {
        out.push(`# HELP ${full} ${escapeHelp(help)}`, `# TYPE ${full} histogram`);
        for (const s of series.values()) {
          // Buckets are stored per interval and written cumulatively.
          let cumulative = 0;
          bounds.forEach((b, i) => {
            cumulative += s.counts[i];
            out.push(`${full}_bucket${labelText(labelNames, s.labels, ['le', formatValue(b)])} ${cumulative}`);
          });
          out.push(`${full}_bucket${labelText(labelNames, s.labels, ['le', '+Inf'])} ${s.count}`);
          out.push(`${full}_sum${labelText(labelNames, s.labels)} ${formatValue(s.sum)}`);
          out.push(`${full}_count${labelText(labelNames, s.labels)} ${s.count}`);
        }
      },
    });
    return {
      observe(v: number, labels?: Labels): void {
        if (Number.isNaN(v)) return;
        checkLabels(labelNames, labels, full);
        const key = seriesKey(labelNames, labels);
        let s = series.get(key);
        if (s === undefined) {
          s = fresh(labels === undefined ? undefined : { ...labels });
          series.set(key, s);
        }
        const i = bounds.findIndex((b) => v <= b);
        if (i >= 0) s.counts[i]++;
        s.sum += v;
        s.count++;
      },
    };
  }

  /** The exposition text (`Content-Type: text/plain; version=0.0.4; charset=utf-8`). */
  render(): string {
    const out: string[] = [];
    for (const f of this.#families) f.render(out);
    return out.length === 0 ? '' : `${out.join('\n')}\n`;
  }
}

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Request-level latencies: 1 ms to 10 min. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
];
/** Per-token latencies: finer at the low end, 1 ms to 60 s. */
export const INTER_TOKEN_BUCKETS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5,
  10, 20, 60,
];

export interface ServerMetricSources {
  running: () => number;
  waiting: () => number;
  /** KV cache blocks in use / total, in [0, 1]. */
  kvUsage: () => number;
  /** Lightning-attention state slots in use. */
  slotsUsed: () => number;
  /** The engine's preemption count; when absent, `preemptions.inc()` is used instead. */
  preemptions?: () => number;
}

export interface ServerMetrics {
  requestsRunning: Gauge;
  requestsWaiting: Gauge;
  kvCacheUsageRatio: Gauge;
  linearStateSlotsUsed: Gauge;
  preemptions: Counter;
  /** Label `reason` (e.g. queue_full, not_ready, draining). */
  admissionRejections: Counter;
  clientDisconnects: Counter;
  promptTokens: Counter;
  generationTokens: Counter;
  /** Label `type` (the OpenAI error type, or a finer cause). */
  requestErrors: Counter;
  /** Label `finish_reason` (stop, length, tool_calls). */
  requestSuccess: Counter;
  timeToFirstToken: Histogram;
  interTokenLatency: Histogram;
  e2eRequestLatency: Histogram;
  queueTime: Histogram;
}

/** The O2 metric set, names as in SERVING.md (each prefixed with the registry's namespace). */
export function createServerMetrics(m: Metrics, sources: ServerMetricSources): ServerMetrics {
  return {
    requestsRunning: m.gauge('requests_running', 'Requests in the running batch.', sources.running),
    requestsWaiting: m.gauge('requests_waiting', 'Requests waiting to be scheduled.', sources.waiting),
    kvCacheUsageRatio: m.gauge('kv_cache_usage_ratio', 'Fraction of KV cache blocks in use (0 to 1).', sources.kvUsage),
    linearStateSlotsUsed: m.gauge(
      'linear_state_slots_used',
      'Lightning-attention state slots in use.',
      sources.slotsUsed,
    ),
    preemptions: m.counter('preemptions_total', 'Sequences preempted (recomputed later).', [], sources.preemptions),
    admissionRejections: m.counter('admission_rejections_total', 'Requests refused at admission.', ['reason']),
    clientDisconnects: m.counter('client_disconnects_total', 'Requests aborted because the client went away.'),
    promptTokens: m.counter('prompt_tokens_total', 'Prompt tokens processed.'),
    generationTokens: m.counter('generation_tokens_total', 'Tokens generated.'),
    requestErrors: m.counter('request_errors_total', 'Requests that ended with an error.', ['type']),
    requestSuccess: m.counter('request_success_total', 'Requests that finished.', ['finish_reason']),
    timeToFirstToken: m.histogram('time_to_first_token_seconds', 'Time to the first generated token.', LATENCY_BUCKETS),
    interTokenLatency: m.histogram('inter_token_latency_seconds', 'Time between generated tokens.', INTER_TOKEN_BUCKETS),
    e2eRequestLatency: m.histogram('e2e_request_latency_seconds', 'Request latency, arrival to last token.', LATENCY_BUCKETS),
    queueTime: m.histogram('queue_time_seconds', 'Time spent waiting before scheduling.', LATENCY_BUCKETS),
  };
}
