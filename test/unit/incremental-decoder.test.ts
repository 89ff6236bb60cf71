/**
 * Tests for src/tokenizer/decoder.ts (streaming detokenization, SERVING.md §5 and MODEL.md §3): no chunk ever
 * carries half a UTF-8 character, chunks + flush() equal decode(ids), U+FFFD handling, bounded work per step.
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { FIXTURES } from '../helpers/paths.js';
import { IncrementalDecoder, Tokenizer, type DecodeSource } from '../../src/tokenizer/index.js';
import { InvalidArgumentError } from '../../src/util/errors.js';

interface EncodeCase {
  text: string;
  ids: number[];
}

const DIR = path.join(FIXTURES, 'tokenizer');
const tok = await Tokenizer.fromDir(DIR);
const cases = JSON.parse(fs.readFileSync(path.join(DIR, 'cases.json'), 'utf8')) as { encode: EncodeCase[] };

/** GPT-2's byte → printable character table, to find the token of a single raw byte. */
function byteToChar(byte: number): string {
  const printable = (b: number): boolean => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (printable(byte)) return String.fromCharCode(byte);
  let n = 0;
  for (let b = 0; b < byte; b++) if (!printable(b)) n++;
  return String.fromCharCode(256 + n);
}

function byteId(byte: number): number {
  const id = tok.tokenToId(byteToChar(byte));
  assert.ok(id !== undefined, `no token for byte ${byte}`);
  return id;
}

/** Feeds ids one at a time; returns the chunks and the flushed tail. */
function stream(ids: readonly number[], skipSpecialTokens = false): { chunks: string[]; tail: string } {
  const d = tok.createDecoder({ skipSpecialTokens });
  const chunks = ids.map((id) => d.push(id));
  assert.deepEqual(d.ids, ids);
  return { chunks, tail: d.flush() };
}

test('every cases.json encode case, one id at a time: no U+FFFD in any chunk, chunks + flush = decode(ids)', () => {
  for (const c of cases.encode) {
    for (const skip of [false, true]) {
      const { chunks, tail } = stream(c.ids, skip);
      for (const chunk of chunks) assert.ok(!chunk.includes('\uFFFD'), `${JSON.stringify(c.text)}: ${JSON.stringify(chunk)}`);
      assert.equal(chunks.join('') + tail, tok.decode(c.ids, { skipSpecialTokens: skip }), JSON.stringify(c.text));
      // The cases contain no replacement characters, so nothing is left for flush.
      assert.equal(tail, '', JSON.stringify(c.text));
    }
  }
});

test('pushMany in uneven chunks gives the same text', () => {
  for (const c of cases.encode) {
    const d = tok.createDecoder();
    let out = '';
    for (let i = 0, step = 1; i < c.ids.length; i += step, step = (step % 3) + 1) out += d.pushMany(c.ids.slice(i, i + step));
    out += d.flush();
    assert.equal(out, tok.decode(c.ids), JSON.stringify(c.text));
  }
});

test('a character whose bytes span several tokens comes out whole, on the id that completes it', () => {
  const ids = tok.encode('a🚀b');
  const { chunks, tail } = stream(ids);
  assert.ok(ids.length >= 4);
  const nonEmpty = chunks.filter((c) => c !== '');
  assert.deepEqual(nonEmpty, ['a', '🚀', 'b']);
  assert.equal(tail, '');
  // Incomplete at the end of generation: flush releases the replacement character that decode() also gives.
  const cut = ids.slice(0, -2);
  const partial = stream(cut);
  assert.equal(partial.chunks.join(''), 'a');
  assert.equal(partial.tail, '\uFFFD');
  assert.equal(partial.chunks.join('') + partial.tail, tok.decode(cut));
});

test('a token that ends with a complete multi-byte character is emitted at once', () => {
  const ids = tok.encode('é');
  const d = tok.createDecoder();
  let out = '';
  for (const id of ids) out += d.push(id);
  assert.equal(out, 'é');
  assert.equal(d.flush(), '');
  // Built byte by byte: nothing until the last byte arrives.
  const bytes = [...Buffer.from('你', 'utf8')].map(byteId);
  const d2 = tok.createDecoder();
  assert.deepEqual(bytes.map((id) => d2.push(id)), ['', '', '你']);
});

test('an isolated invalid byte: held while it could be a prefix, released as U+FFFD once text follows or at flush', () => {
  const lone = byteId(0x80); // a continuation byte with no lead byte: never valid
  const a = byteId(0x61);
  const d = tok.createDecoder();
  assert.equal(d.push(lone), '');
  assert.equal(d.push(a), '\uFFFDa');
  assert.equal(d.flush(), '');

  const d2 = tok.createDecoder();
  assert.equal(d2.push(lone), '');
  assert.equal(d2.flush(), '\uFFFD');

  // A lead byte followed by something that is not a continuation: the lead byte becomes U+FFFD.
  const lead = byteId(0xe4);
  const d3 = tok.createDecoder();
  assert.equal(d3.push(lead), '');
  assert.equal(d3.push(a), '\uFFFDa');
  assert.equal(tok.decode([lead, a]), '\uFFFDa');
});

test('a genuine U+FFFD from the model is released by the next text or by flush', () => {
  const ids = tok.encode('x\uFFFD');
  const { chunks, tail } = stream(ids);
  assert.equal(chunks.join(''), 'x');
  assert.equal(tail, '\uFFFD');

  const more = tok.encode('x\uFFFDy');
  const s = stream(more);
  assert.equal(s.chunks.join(''), 'x\uFFFDy');
  assert.equal(s.tail, '');
});

test('a long run of invalid bytes streams out with bounded work per id', () => {
  const lone = byteId(0x80);
  let decodedIds = 0;
  const counting: DecodeSource = {
    decode(ids, options) {
      decodedIds += ids.length;
      return tok.decode(ids, options);
    },
  };
  const d = new IncrementalDecoder(counting);
  const n = 2000;
  let out = '';
  for (let i = 0; i < n; i++) {
    const chunk = d.push(lone);
    if (i > 0) assert.ok(chunk === '' || /^\uFFFD+$/.test(chunk));
    out += chunk;
  }
  out += d.flush();
  assert.equal(out, '\uFFFD'.repeat(n));
  assert.equal(out, tok.decode(d.ids));
  assert.ok(decodedIds < 40 * n, `decoded ${decodedIds} ids for ${n} pushes`);
});

test('a long run of ids that add no text (skipped specials, ids past the vocabulary) keeps the window small', () => {
  let decodedIds = 0;
  const counting: DecodeSource = {
    decode(ids, options) {
      decodedIds += ids.length;
      return tok.decode(ids, options);
    },
  };
  const d = new IncrementalDecoder(counting, { skipSpecialTokens: true });
  const n = 2000;
  let out = d.push(43);
  for (let i = 0; i < n; i++) out += d.push(i % 2 === 0 ? 3 : 200063);
  for (const id of tok.encode('ello 🚀')) out += d.push(id);
  out += d.flush();
  assert.equal(out, 'Hello 🚀');
  assert.equal(out, tok.decode(d.ids, { skipSpecialTokens: true }));
  assert.ok(decodedIds < 40 * n, `decoded ${decodedIds} ids for ${n} pushes`);
});

test('a long normal stream decodes a small window per id', () => {
  const text = 'The registry is a public collection of packages. 你好，世界 🚀 '.repeat(40);
  const ids = tok.encode(text);
  let decodedIds = 0;
  const counting: DecodeSource = {
    decode(list, options) {
      decodedIds += list.length;
      return tok.decode(list, options);
    },
  };
  const d = new IncrementalDecoder(counting);
  let out = '';
  for (const id of ids) out += d.push(id);
  out += d.flush();
  assert.equal(out, text);
  assert.ok(decodedIds < 20 * ids.length, `decoded ${decodedIds} ids for ${ids.length} pushes`);
});

test('special tokens: kept as text by default, dropped with skipSpecialTokens', () => {
  const ids = tok.encodeChat([{ role: 'user', content: 'Hi 🚀' }]);
  const kept = stream(ids);
  assert.equal(kept.chunks.join('') + kept.tail, tok.decode(ids));
  assert.ok(kept.chunks.join('').includes('<end_of_sentence>'));
  const skipped = stream(ids, true);
  assert.equal(skipped.chunks.join('') + skipped.tail, tok.decode(ids, { skipSpecialTokens: true }));
  assert.ok(!skipped.chunks.join('').includes('<'));
});

test('ids without a token contribute nothing; bad ids are refused and leave the decoder unchanged', () => {
  const d = tok.createDecoder();
  assert.equal(d.push(43), 'H');
  assert.equal(d.push(200063), '');
  assert.throws(() => d.push(-1), (e: unknown) => e instanceof InvalidArgumentError && e.param === 'id');
  assert.throws(() => d.push(2.5), (e: unknown) => e instanceof InvalidArgumentError && e.param === 'id');
  assert.throws(() => d.pushMany([72, Number.NaN]), (e: unknown) => e instanceof InvalidArgumentError && e.param === 'ids');
  assert.deepEqual(d.ids, [43, 200063]);
  assert.equal(d.pushMany([]), '');
});

test('pushing after flush continues the stream', () => {
  const first = tok.encode('Hello');
  const second = tok.encode(' world');
  const d = tok.createDecoder();
  let out = d.pushMany(first);
  out += d.flush();
  for (const id of second) out += d.push(id);
  out += d.flush();
  assert.equal(out, 'Hello world');
  assert.deepEqual(d.ids, [...first, ...second]);
});
