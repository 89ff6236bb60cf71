/**
 * Generation through the public API against the tiny fixture (test/fixtures/tiny): greedy ids equal the reference
 * continuation (gen.ids); stream() events (tokens, then exactly one `done`) concatenate to generate().text and to
 * the full decode, never carry half a surrogate pair or a U+FFFD the full decode lacks; maxTokens, stop token ids,
 * EOS (found by sampling) and ignoreEos; literal stop strings cut the text before their first occurrence; seeded
 * sampling is reproducible; AbortSignal (mid-stream and already aborted); option / prompt / context-length
 * validation; chat() = generate(encodeChat(...)); generation_config defaults (do_sample false ⇒ greedy); prefill
 * chunk size does not change the output; logprobs; Session chunked append = one append (logits and lightning
 * states); dispose semantics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  AbortError,
  DisposedError,
  InvalidArgumentError,
  loadModel,
  type GenerateOptions,
  type GenerationResult,
  type Model,
  type StreamEvent,
} from '../../src/index.js';
import { FIXTURES } from '../helpers/paths.js';
import { assertClose, getF32, getIds, readExpected } from '../helpers/expected.js';

const TINY = path.join(FIXTURES, 'tiny');
const model: Model = await loadModel(TINY, { device: 'cpu' });
const exp = await readExpected('tiny');
const PROMPT = getIds(exp, 'gen.prompt');
const GEN = getIds(exp, 'gen.ids');
const V = model.config.vocabSize;
const GREEDY: GenerateOptions = { temperature: 0, ignoreEos: true };

/** The text of the greedy reference continuation, as the engine should produce it. */
const GEN_TEXT = model.decode(GEN, { skipSpecialTokens: true });

async function collect(it: AsyncIterable<StreamEvent>): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const ev of it) events.push(ev);
  return events;
}

/** Checks the event protocol and returns the concatenated text and the token ids. */
function checkEvents(events: StreamEvent[], fullDecode: string, what: string): { text: string; ids: number[] } {
  assert.ok(events.length >= 2, `${what}: ${events.length} events`);
  const last = events[events.length - 1];
  assert.equal(last.type, 'done', `${what}: the last event is not 'done'`);
  assert.equal(events.filter((e) => e.type === 'done').length, 1, `${what}: more than one done event`);
  let text = '';
  const ids: number[] = [];
  for (const ev of events) {
    if (ev.type === 'token') {
      assert.ok(Number.isInteger(ev.id) && ev.id >= 0 && ev.id < V, `${what}: token id ${ev.id}`);
      ids.push(ev.id);
    }
    assert.equal(typeof ev.text, 'string');
    // no event splits a surrogate pair
    assert.ok(!/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(ev.text), `${what}: event text ${JSON.stringify(ev.text)} has a lone surrogate`);
    text += ev.text;
    // what was streamed so far is a prefix of the final text: no premature U+FFFD, nothing to take back
    assert.ok(fullDecode.startsWith(text), `${what}: streamed ${JSON.stringify(text)} is not a prefix of ${JSON.stringify(fullDecode)}`);
  }
  assert.equal(last.type === 'done' && last.completionTokens, ids.length, `${what}: completionTokens`);
  return { text, ids };
}

function expectInvalid(param: string, match?: RegExp | string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(e)}`);
    assert.equal(e.param, param, `param of: ${e.message}`);
    if (typeof match === 'string') assert.ok(e.message.includes(match), `message ${JSON.stringify(e.message)} should contain ${JSON.stringify(match)}`);
    else if (match) assert.match(e.message, match);
    return true;
  };
}

test('greedy generate with ignoreEos reproduces the reference continuation (gen.ids)', async () => {
  assert.equal(PROMPT.length, 23);
  const r = await model.generate(PROMPT, { ...GREEDY, maxTokens: GEN.length });
  assert.deepEqual(r.ids, GEN);
  assert.equal(r.finishReason, 'length');
  assert.equal(r.promptTokens, PROMPT.length);
  assert.equal(r.completionTokens, GEN.length);
  assert.equal(r.text, GEN_TEXT);
  // a shorter budget gives the first N of the same ids
  const r5 = await model.generate(PROMPT, { ...GREEDY, maxTokens: 5 });
  assert.deepEqual(r5.ids, GEN.slice(0, 5));
  assert.equal(r5.finishReason, 'length');
  assert.equal(r5.completionTokens, 5);
  const r1 = await model.generate(PROMPT, { ...GREEDY, maxTokens: 1 });
  assert.deepEqual(r1.ids, GEN.slice(0, 1));
  // a string prompt is tokenized first: the same as passing its ids
  const s = 'npm install the package';
  const a = await model.generate(s, { ...GREEDY, maxTokens: 6 });
  const b = await model.generate(model.encode(s), { ...GREEDY, maxTokens: 6 });
  assert.deepEqual(a, b);
});

test('stream(): token events then exactly one done; the text equals generate() and the full decode', async () => {
  const events = await collect(model.stream(PROMPT, { ...GREEDY, maxTokens: GEN.length }));
  const { text, ids } = checkEvents(events, GEN_TEXT, 'greedy stream');
  assert.deepEqual(ids, GEN);
  assert.equal(events.length, GEN.length + 1);
  const done = events[events.length - 1];
  assert.ok(done.type === 'done');
  assert.equal(done.finishReason, 'length');
  assert.equal(done.promptTokens, PROMPT.length);
  assert.equal(done.completionTokens, GEN.length);
  const g = await model.generate(PROMPT, { ...GREEDY, maxTokens: GEN.length });
  assert.equal(text, g.text);
  assert.equal(text, model.tokenizer.decode(ids, { skipSpecialTokens: true }));

  // sampled runs at a high temperature produce stray bytes (U+FFFD in the decode) and arbitrary tokens: the same
  // guarantees hold, and the stream equals generate() for the same seed
  for (const seed of [1, 2, 3]) {
    const opts: GenerateOptions = { temperature: 1.5, seed, maxTokens: 48, ignoreEos: true };
    const evs = await collect(model.stream(PROMPT, opts));
    const ids2 = evs.flatMap((e) => (e.type === 'token' ? [e.id] : []));
    const full = model.tokenizer.decode(ids2, { skipSpecialTokens: true });
    const r = checkEvents(evs, full, `sampled stream seed ${seed}`);
    assert.equal(r.text, full);
    const g2 = await model.generate(PROMPT, opts);
    assert.deepEqual(g2.ids, ids2);
    assert.equal(g2.text, r.text);
  }
});

test('maxTokens is respected (finishReason length, completionTokens = maxTokens)', async () => {
  for (const maxTokens of [1, 3, 9]) {
    const r = await model.generate(PROMPT, { temperature: 0.9, seed: 5, maxTokens, ignoreEos: true });
    assert.equal(r.ids.length, maxTokens);
    assert.equal(r.completionTokens, maxTokens);
    assert.equal(r.finishReason, 'length');
    const events = await collect(model.stream(PROMPT, { temperature: 0.9, seed: 5, maxTokens, ignoreEos: true }));
    assert.equal(events.filter((e) => e.type === 'token').length, maxTokens);
    const done = events.at(-1)!;
    assert.ok(done.type === 'done' && done.finishReason === 'length' && done.completionTokens === maxTokens);
  }
});

test('a stop token id ends generation at its step: id included in ids, its text not in text', async () => {
  // the first step k ≥ 10 whose greedy id did not occur before
  const k = GEN.findIndex((id, i) => i >= 10 && !GEN.slice(0, i).includes(id));
  assert.ok(k > 0);
  const stopId = GEN[k];
  for (const ignoreEos of [false, true]) {
    const r = await model.generate(PROMPT, { temperature: 0, ignoreEos, stopTokenIds: [stopId, V - 1 === stopId ? 0 : V - 1], maxTokens: 32 });
    assert.deepEqual(r.ids, GEN.slice(0, k + 1), `ignoreEos ${ignoreEos}`);
    assert.equal(r.finishReason, 'stop');
    assert.equal(r.completionTokens, k + 1);
    assert.equal(r.text, model.decode(GEN.slice(0, k), { skipSpecialTokens: true }));
    assert.ok(GEN_TEXT.startsWith(r.text));
  }
  const events = await collect(model.stream(PROMPT, { temperature: 0, stopTokenIds: [stopId], maxTokens: 32 }));
  const last = events.at(-2)!;
  assert.ok(last.type === 'token' && last.id === stopId && last.text === '');
  const done = events.at(-1)!;
  assert.ok(done.type === 'done' && done.finishReason === 'stop' && done.completionTokens === k + 1);
});

test('EOS (id 3) ends generation unless ignoreEos', async () => {
  assert.deepEqual(model.eosTokenIds, [3]);
  // A context where id 3 is among the three most likely tokens: a prefix of the 300-token fixture prompt.
  // Find a seed for which sampling (T = 1, top-3) emits EOS before the last step, with ignoreEos so it continues.
  const prompt = getIds(exp, 'p4.ids').slice(0, 98);
  const opts: GenerateOptions = { temperature: 1, topK: 3, maxTokens: 6 };
  let found: { seed: number; through: GenerationResult; j: number } | undefined;
  for (let seed = 0; seed < 60 && !found; seed++) {
    const through = await model.generate(prompt, { ...opts, seed, ignoreEos: true });
    const j = through.ids.indexOf(3);
    if (j >= 0 && j < opts.maxTokens! - 1) found = { seed, through, j };
  }
  assert.ok(found, 'no seed in 0..59 made the model emit EOS (precondition of this test)');
  const { seed, through, j } = found;
  // ignoreEos: continues past the EOS to the budget
  assert.equal(through.finishReason, 'length');
  assert.equal(through.ids.length, opts.maxTokens);
  assert.ok(through.ids.slice(j + 1).length > 0);
  // default: stops at the EOS (same seed ⇒ same draws up to there); the EOS id is in ids, its text is not in text
  const stopped = await model.generate(prompt, { ...opts, seed });
  assert.deepEqual(stopped.ids, through.ids.slice(0, j + 1));
  assert.equal(stopped.finishReason, 'stop');
  assert.equal(stopped.completionTokens, j + 1);
  assert.equal(stopped.text, model.decode(through.ids.slice(0, j), { skipSpecialTokens: true }));
  assert.ok(!stopped.text.includes('<end_of_sentence>'));
});

test('stop strings: the text ends just before the first occurrence; finishReason stop', async () => {
  // a 4-character substring from the middle of the greedy text (without U+FFFD or control characters)
  let i = Math.floor(GEN_TEXT.length / 2);
  while (!/^[\x20-\x7e]{4}$/.test(GEN_TEXT.slice(i, i + 4))) i++;
  const stop = GEN_TEXT.slice(i, i + 4);
  const at = GEN_TEXT.indexOf(stop);
  assert.ok(at > 0 && at < GEN_TEXT.length - 4, `stop ${JSON.stringify(stop)} at ${at}`);
  const want = GEN_TEXT.slice(0, at);
  for (const stops of [[stop], ['never-in-the-output', stop], [stop, stop.slice(1) + '\u0000']]) {
    const r = await model.generate(PROMPT, { ...GREEDY, maxTokens: 32, stop: stops });
    assert.equal(r.text, want, `stop ${JSON.stringify(stops)}`);
    assert.equal(r.finishReason, 'stop');
    // generation ended at the token that completed the stop string
    assert.deepEqual(r.ids, GEN.slice(0, r.ids.length));
    assert.ok(r.ids.length < GEN.length);
    assert.ok(model.decode(r.ids, { skipSpecialTokens: true }).includes(stop));
    assert.ok(!model.decode(r.ids.slice(0, -1), { skipSpecialTokens: true }).includes(stop));
    assert.equal(r.completionTokens, r.ids.length);

    const events = await collect(model.stream(PROMPT, { ...GREEDY, maxTokens: 32, stop: stops }));
    const { text } = checkEvents(events, want, `stream stop ${JSON.stringify(stops)}`);
    assert.equal(text, want);
    const done = events.at(-1)!;
    assert.ok(done.type === 'done' && done.finishReason === 'stop');
  }
  // a stop string that never occurs changes nothing
  const r = await model.generate(PROMPT, { ...GREEDY, maxTokens: 32, stop: ['\u0000never\u0000'] });
  assert.equal(r.text, GEN_TEXT);
  assert.deepEqual(r.ids, GEN);
  assert.equal(r.finishReason, 'length');
  // literal, not a regex: '.' would match any character at the very start
  const dot = await model.generate(PROMPT, { ...GREEDY, maxTokens: 32, stop: ['.', '.*'] });
  assert.equal(dot.text, GEN_TEXT.includes('.') ? GEN_TEXT.slice(0, GEN_TEXT.indexOf('.')) : GEN_TEXT);
});

test('seeded sampling is reproducible; different seeds differ', async () => {
  const opts: GenerateOptions = { temperature: 0.8, topK: 50, topP: 0.9, maxTokens: 24, ignoreEos: true };
  const a = await model.generate(PROMPT, { ...opts, seed: 1234 });
  const b = await model.generate(PROMPT, { ...opts, seed: 1234 });
  assert.deepEqual(b, a);
  assert.equal(a.ids.length, 24);
  const c = await model.generate(PROMPT, { ...opts, seed: 4321 });
  assert.notDeepEqual(c.ids, a.ids);
  // sampling is really happening (not greedy)
  assert.notDeepEqual(a.ids, GEN.slice(0, 24));
});

test('AbortSignal: mid-stream abort throws AbortError; generate() rejects; an aborted signal rejects before any token', async () => {
  const ac = new AbortController();
  const events: StreamEvent[] = [];
  await assert.rejects(
    (async () => {
      for await (const ev of model.stream(PROMPT, { ...GREEDY, maxTokens: 32, signal: ac.signal })) {
        events.push(ev);
        if (events.length === 3) ac.abort();
      }
    })(),
    AbortError,
  );
  assert.equal(events.length, 3);
  assert.ok(events.every((e) => e.type === 'token'));

  // generate(): aborted from a timer while it runs (a 2000-token budget takes seconds, the timer fires in 20 ms)
  const ac2 = new AbortController();
  const timer = setTimeout(() => ac2.abort(), 20);
  const t0 = performance.now();
  try {
    await assert.rejects(model.generate(PROMPT, { ...GREEDY, maxTokens: 2000, signal: ac2.signal }), AbortError);
  } finally {
    clearTimeout(timer);
  }
  assert.ok(performance.now() - t0 < 2000, 'abort took effect late');

  // already aborted: no token at all
  const signal = AbortSignal.abort();
  await assert.rejects(model.generate(PROMPT, { ...GREEDY, maxTokens: 8, signal }), AbortError);
  const early: StreamEvent[] = [];
  await assert.rejects(
    (async () => {
      for await (const ev of model.stream(PROMPT, { ...GREEDY, maxTokens: 8, signal })) early.push(ev);
    })(),
    AbortError,
  );
  assert.equal(early.length, 0);
  await assert.rejects(model.chat([{ role: 'user', content: 'Hi' }], { maxTokens: 8, signal }), AbortError);

  // the model still works afterwards
  const r = await model.generate(PROMPT, { ...GREEDY, maxTokens: 4 });
  assert.deepEqual(r.ids, GEN.slice(0, 4));
});

test('invalid options, prompts and context overflow reject with InvalidArgumentError naming the parameter', async () => {
  await assert.rejects(model.generate(PROMPT, { maxTokens: 0 }), expectInvalid('maxTokens'));
  await assert.rejects(model.generate(PROMPT, { maxTokens: 2.5 }), expectInvalid('maxTokens'));
  await assert.rejects(model.generate(PROMPT, { stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }), expectInvalid('stop'));
  await assert.rejects(model.generate(PROMPT, { stop: [''] }), expectInvalid('stop'));
  await assert.rejects(model.generate(PROMPT, { stop: ['ok', ''] }), expectInvalid('stop'));
  await assert.rejects(model.generate(PROMPT, { topP: 2 }), expectInvalid('topP'));
  await assert.rejects(model.generate(PROMPT, { temperature: -1 }), expectInvalid('temperature'));
  await assert.rejects(model.generate(PROMPT, { topK: -1 }), expectInvalid('topK'));
  await assert.rejects(model.generate(PROMPT, { seed: 0.5 }), expectInvalid('seed'));
  await assert.rejects(model.generate(PROMPT, { prefillChunkSize: 0 }), expectInvalid('prefillChunkSize'));
  await assert.rejects(model.generate(PROMPT, { stopTokenIds: [-1] }), expectInvalid('stopTokenIds'));
  // 16 stop strings are fine
  const ok = await model.generate(PROMPT, { ...GREEDY, maxTokens: 2, stop: Array.from({ length: 16 }, (_, i) => `\u0000${i}`) });
  assert.equal(ok.ids.length, 2);
  // the stream reports the same errors on its first step
  await assert.rejects(collect(model.stream(PROMPT, { maxTokens: 0 })), expectInvalid('maxTokens'));
  await assert.rejects(collect(model.chatStream([{ role: 'user', content: 'Hi' }], { topP: 2 })), expectInvalid('topP'));

  // token ids out of range are named
  await assert.rejects(model.generate([5, V, 7], GREEDY), expectInvalid('ids', String(V)));
  await assert.rejects(model.generate([5, 99999], GREEDY), expectInvalid('ids', '99999'));
  await assert.rejects(model.generate([5, -1], GREEDY), expectInvalid('ids', '-1'));
  await assert.rejects(model.generate([5, 1.5], GREEDY), expectInvalid('ids', '1.5'));
  // empty prompts
  await assert.rejects(model.generate([], GREEDY), expectInvalid('prompt'));
  await assert.rejects(model.generate('', GREEDY), expectInvalid('prompt'));
  // context overflow: prompt + maxTokens > max_position_embeddings
  assert.equal(model.config.maxPositionEmbeddings, 10_240_000);
  await assert.rejects(model.generate(PROMPT, { maxTokens: 10_240_000 }), expectInvalid('maxTokens', 'maximum context length is'));
  await assert.rejects(collect(model.stream(PROMPT, { maxTokens: 10_240_000 })), expectInvalid('maxTokens', 'maximum context length is'));
  await assert.rejects(model.generate(PROMPT, { maxTokens: 10_240_000 - PROMPT.length + 1 }), expectInvalid('maxTokens', 'maximum context length is 10240000'));
});

test('chat() generates from encodeChat(messages, {addGenerationPrompt: true})', async () => {
  const messages = [{ role: 'user', content: 'Hi' }];
  const ids = model.tokenizer.encodeChat(messages, { addGenerationPrompt: true });
  const want = await model.generate(ids, { temperature: 0, maxTokens: 12, ignoreEos: true });
  const got = await model.chat(messages, { maxTokens: 12, ignoreEos: true });
  assert.deepEqual(got.ids, want.ids);
  assert.equal(got.text, want.text);
  assert.equal(got.promptTokens, ids.length);
  const events = await collect(model.chatStream(messages, { maxTokens: 12, ignoreEos: true }));
  const { text, ids: streamed } = checkEvents(events, want.text, 'chatStream');
  assert.deepEqual(streamed, want.ids);
  assert.equal(text, want.text);
});

test('generation_config defaults: do_sample false ⇒ greedy unless the caller asks for a temperature', async () => {
  assert.equal(model.generationDefaults.temperature, 0);
  // no temperature, no seed: greedy, so repeatable and equal to temperature 0
  const a = await model.generate(PROMPT, { maxTokens: 16, ignoreEos: true });
  const b = await model.generate(PROMPT, { maxTokens: 16, ignoreEos: true });
  assert.deepEqual(a.ids, GEN.slice(0, 16));
  assert.deepEqual(b.ids, a.ids);
  // an explicit temperature wins over the default
  const s1 = await model.generate(PROMPT, { temperature: 1, seed: 1, maxTokens: 16, ignoreEos: true });
  const s2 = await model.generate(PROMPT, { temperature: 1, seed: 2, maxTokens: 16, ignoreEos: true });
  assert.notDeepEqual(s1.ids, s2.ids);
});

test('prefill chunk size does not change the output', async () => {
  for (const prefillChunkSize of [1, 5, 11, 22, 23, 2048]) {
    const r = await model.generate(PROMPT, { ...GREEDY, maxTokens: 16, prefillChunkSize });
    assert.deepEqual(r.ids, GEN.slice(0, 16), `prefillChunkSize ${prefillChunkSize}`);
    assert.equal(r.promptTokens, PROMPT.length);
  }
  // sampled, seeded: the same draws whatever the chunking
  const opts: GenerateOptions = { temperature: 0.8, seed: 77, maxTokens: 12, ignoreEos: true };
  const x = await model.generate(PROMPT, { ...opts, prefillChunkSize: 5 });
  const y = await model.generate(PROMPT, { ...opts, prefillChunkSize: 2048 });
  assert.deepEqual(x.ids, y.ids);
});

test('logprobs: each token event carries log p(id) of the unmodified distribution', async () => {
  const gl = getF32(exp, 'gen.logits');
  const events = await collect(model.stream(PROMPT, { ...GREEDY, maxTokens: 8, logprobs: true }));
  const tokens = events.filter((e) => e.type === 'token');
  assert.equal(tokens.length, 8);
  tokens.forEach((ev, t) => {
    assert.ok(ev.type === 'token' && ev.logprob !== undefined);
    const row = gl.subarray(t * V, (t + 1) * V);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    const want = row[ev.id] - max - Math.log(sum);
    assert.ok(Math.abs(ev.logprob - want) < 1e-4, `step ${t}: logprob ${ev.logprob} vs ${want}`);
    assert.ok(ev.logprob <= 0);
  });
  const plain = await collect(model.stream(PROMPT, { ...GREEDY, maxTokens: 2 }));
  assert.ok(plain.every((e) => e.type === 'done' || !('logprob' in e)));
});

test('Session: chunked append (7 + 16) equals one append of 23; dispose semantics', () => {
  const s1 = model.createSession();
  const s2 = model.createSession();
  try {
    const none = s1.append(PROMPT.slice(0, 7), { logits: 'none' });
    assert.equal(none.rows, 0);
    assert.equal(s1.position, 7);
    const chunked = s1.append(PROMPT.slice(7)).row(0);
    const whole = s2.append(PROMPT);
    assert.equal(whole.rows, 1);
    assert.equal(s1.position, 23);
    assert.equal(s2.position, 23);
    assertClose(chunked, whole.row(0), 1e-5, 'last-row logits, 7 + 16 vs 23');
    // and both agree with the reference's first generated step
    assertClose(whole.row(0), getF32(exp, 'gen.logits').subarray(0, V), 1e-4, 'last-row logits vs gen.logits[0]');
    // Lightning states agree to 1e-6 relative to the state's magnitude. (|S| reaches ~14 here, where one f32 ulp
    // is 9.5e-7: the chunked path rounds S to f32 at the chunk boundary, so an absolute 1e-6 would fail on rounding
    // alone; observed differences are ≤ 3 ulp, ~2e-7 of max |S|.)
    const lightning = model.config.layerTypes.flatMap((t, l) => (t === 'lightning' ? [l] : []));
    assert.ok(lightning.length > 0);
    for (const l of lightning) {
      const want = s2.lightningState(l);
      const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assert.ok(scale > 0);
      assertClose(s1.lightningState(l), want, 1e-6 * Math.max(1, scale), `lightning state of layer ${l} (max |S| ${scale.toFixed(2)})`);
    }
    // 'all' returns one row per token
    const s3 = model.createSession();
    const all = s3.append(PROMPT.slice(0, 4), { logits: 'all' });
    assert.equal(all.rows, 4);
    assert.equal(all.row(3).length, V);
    s3.dispose();
    // other split points: the same last-row logits and states
    for (const split of [1, 11, 22]) {
      const s4 = model.createSession();
      try {
        s4.append(PROMPT.slice(0, split), { logits: 'none' });
        assertClose(s4.append(PROMPT.slice(split)).row(0), whole.row(0), 1e-5, `last-row logits, ${split} + ${23 - split} vs 23`);
        for (const l of lightning) {
          const want = s2.lightningState(l);
          const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          assertClose(s4.lightningState(l), want, 1e-6 * Math.max(1, scale), `lightning state of layer ${l}, split ${split}`);
        }
      } finally {
        s4.dispose();
      }
    }
  } finally {
    s1.dispose();
    s2.dispose();
  }
  assert.throws(() => s1.append([1]), DisposedError);
  assert.throws(() => s1.lightningState(0), DisposedError);
  assert.doesNotThrow(() => s1.dispose(), 'Session.dispose is idempotent');
});

test('Model.dispose is idempotent; a disposed model refuses work with DisposedError', async () => {
  const m = await loadModel(TINY, { device: 'cpu' });
  const r = await m.generate(PROMPT, { ...GREEDY, maxTokens: 2 });
  assert.deepEqual(r.ids, GEN.slice(0, 2));
  m.dispose();
  assert.doesNotThrow(() => m.dispose());
  assert.doesNotThrow(() => m[Symbol.dispose]());
  assert.throws(() => m.createSession(), DisposedError);
  assert.throws(() => m.logits([1, 2]), DisposedError);
  await assert.rejects(m.generate(PROMPT, { maxTokens: 2 }), DisposedError);
  await assert.rejects(collect(m.stream(PROMPT, { maxTokens: 2 })), DisposedError);
});
