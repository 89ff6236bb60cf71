/**
 * Tests for src/train/bpe.ts: the byte map, merges equal to a from-scratch reference (recount every pair at every
 * step), determinism, the written tokenizer.json loading through src/tokenizer with exact encode/decode round trips,
 * and option errors.
 */

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { BpeTrainer, PRETOKENIZE_PATTERN, byteToUnicode, toTokenizerJson, trainBpe, writeTokenizer } from '../../src/train/bpe.js';
import { Tokenizer } from '../../src/tokenizer/index.js';
import { InvalidArgumentError } from '../../src/util/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-bpe-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Deterministic English-ish text with punctuation, numbers, whitespace runs and some non-ASCII. */
function sampleText(): string {
  const words = ['the', 'whale', 'ship', 'sea', 'captain', 'Ahab', 'said', 'and', 'of', 'to', 'in', 'a', 'white', 'harpoon', 'Ishmael'];
  let s = 1;
  const rnd = (n: number): number => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % n;
  };
  const parts: string[] = [];
  const syllables = ['ka', 'lo', 'mi', 'ter', 'an', 'dus', 'pre', 'ing', 'th', 'or', 'ble', 'qu'];
  for (let i = 0; i < 3000; i++) {
    if (rnd(3) === 0) {
      let w = '';
      for (let k = 1 + rnd(3); k > 0; k--) w += syllables[rnd(syllables.length)];
      parts.push(rnd(5) === 0 ? w[0].toUpperCase() + w.slice(1) : w);
    } else parts.push(words[rnd(words.length)]);
    const r = rnd(20);
    if (r === 0) parts.push('. ');
    else if (r === 1) parts.push(', ');
    else if (r === 2) parts.push(` ${rnd(1000)} `);
    else if (r === 3) parts.push('\n\n');
    else if (r === 4) parts.push(' — “café” ');
    else parts.push(' ');
  }
  return parts.join('');
}

const SAMPLE = sampleText();

const ROUNDTRIP = [
  'Hello, world!',
  "It's the whale's harpoon; they'll see, we've won, I'm sure, you'd agree.",
  'Ünïcödé façade naïve — “quotes” ‘single’ – dash',
  'Emoji: 😀🎉👩‍👩‍👧‍👦 🇫🇷 and ❤️ with variation selectors',
  '中文文本和日本語のテキスト、한국어 텍스트',
  'مرحبا بالعالم  שלום עולם',
  'Combining: e\u0301 a\u0308 \u200b zero-width, \u00a0nbsp, \u2028 line sep',
  '  leading spaces, trailing spaces   ',
  '\ttabs\tand\r\nCRLF\n\n\nblank lines\n',
  '12345 3.14159 1e-9 0x7fff 1,000,000',
  'code: for (let i = 0; i < n; i++) { x[i] += y[i] * 2; } // comment',
  'special markers as text: <|endoftext|> <beginning_of_sentence>',
  '',
  ' ',
  '\u{10ffff}\u{1F600}\u0000\u0001 controls',
];

/** The textbook algorithm: recount all pairs of all words at every step; ties to the smaller (a, b) ids. */
function referenceMerges(text: string, vocabSize: number, specials: string[], minFrequency: number): [string, string][] {
  const b2u = byteToUnicode();
  const tokens = [...specials, ...b2u];
  const ids = new Map(tokens.map((t, i) => [t, i]));
  const counts = new Map<string, number>();
  for (const m of text.match(new RegExp(PRETOKENIZE_PATTERN.source, PRETOKENIZE_PATTERN.flags)) ?? []) {
    counts.set(m, (counts.get(m) ?? 0) + 1);
  }
  const words = [...counts].map(([w, f]) => ({ sym: [...new TextEncoder().encode(w)].map((b) => specials.length + b), f }));
  const merges: [string, string][] = [];
  while (tokens.length < vocabSize) {
    const pairs = new Map<string, number>();
    for (const { sym, f } of words) for (let i = 0; i + 1 < sym.length; i++) pairs.set(`${sym[i]},${sym[i + 1]}`, (pairs.get(`${sym[i]},${sym[i + 1]}`) ?? 0) + f);
    let best: [number, number] | undefined;
    let bestCount = 0;
    for (const [k, c] of pairs) {
      const [a, b] = k.split(',').map(Number);
      if (c > bestCount || (c === bestCount && best !== undefined && (a < best[0] || (a === best[0] && b < best[1])))) {
        best = [a, b];
        bestCount = c;
      }
    }
    if (best === undefined || bestCount < minFrequency) break;
    const [a, b] = best;
    const str = tokens[a] + tokens[b];
    let c = ids.get(str);
    if (c === undefined) {
      c = tokens.length;
      tokens.push(str);
      ids.set(str, c);
    }
    merges.push([tokens[a], tokens[b]]);
    for (const w of words) {
      const out: number[] = [];
      for (let i = 0; i < w.sym.length; ) {
        if (i + 1 < w.sym.length && w.sym[i] === a && w.sym[i + 1] === b) {
          out.push(c);
          i += 2;
        } else out.push(w.sym[i++]);
      }
      w.sym = out;
    }
  }
  return merges;
}

test('byteToUnicode is a bijection onto printable characters; printable ASCII maps to itself', () => {
  const m = byteToUnicode();
  assert.equal(m.length, 256);
  assert.equal(new Set(m).size, 256);
  assert.equal(m[0x41], 'A');
  assert.equal(m[0x20], 'Ġ');
  assert.equal(m[0x0a], 'Ċ');
  for (const ch of m) assert.ok(!/\s/u.test(ch), `byte maps to whitespace ${JSON.stringify(ch)}`);
});

test('merges equal the from-scratch reference (incremental counts, ties, minFrequency)', () => {
  for (const [vocabSize, minFrequency] of [[600, 2], [1200, 1], [5000, 3]] as const) {
    const specials = ['<|endoftext|>'];
    const model = trainBpe([SAMPLE], { vocabSize, specialTokens: specials, minFrequency });
    assert.deepEqual(model.merges, referenceMerges(SAMPLE, vocabSize, specials, minFrequency), `vocab ${vocabSize}`);
    assert.ok(model.tokens.length <= vocabSize);
    assert.equal(model.tokens.length, new Set(model.tokens).size);
  }
});

test('training is deterministic and independent of how the text is fed', () => {
  const a = trainBpe([SAMPLE], { vocabSize: 700 });
  const t = new BpeTrainer({ vocabSize: 700 });
  const half = SAMPLE.indexOf('\n\n', SAMPLE.length >> 1); // a cut between pre-tokens
  t.add(SAMPLE.slice(0, half));
  t.add(SAMPLE.slice(half));
  const b = t.train();
  assert.equal(JSON.stringify(toTokenizerJson(a)), JSON.stringify(toTokenizerJson(b)));
  assert.equal(t.stats?.merges, b.merges.length);
});

test('the written tokenizer loads through src/tokenizer and round-trips varied text exactly', async () => {
  const model = trainBpe([SAMPLE, ...ROUNDTRIP], { vocabSize: 600 });
  assert.equal(model.tokens.length, 600);
  const dir = path.join(tmp, 'tok');
  await writeTokenizer(dir, model);
  const tok = await Tokenizer.fromDir(dir);
  assert.equal(tok.vocabSize, 600);
  assert.equal(tok.eosToken, '<|endoftext|>');
  assert.equal(tok.eosTokenId, 0);
  for (const s of [...model.specialTokens]) assert.ok(tok.specialTokenIds.has(tok.tokenToId(s)!));

  for (const text of [...ROUNDTRIP, SAMPLE.slice(0, 5000)]) {
    const ids = tok.encode(text, { parseSpecialTokens: false });
    assert.equal(tok.decode(ids), text, JSON.stringify(text));
    for (const id of ids) assert.ok(id >= model.specialTokens.length && id < 600);
  }
  // Merges are used: the training text takes far fewer tokens than bytes.
  const ids = tok.encode(SAMPLE);
  assert.ok(ids.length < Buffer.byteLength(SAMPLE) / 2.5, `${ids.length} tokens for ${Buffer.byteLength(SAMPLE)} bytes`);
  // Special tokens are control tokens when parsed, and plain text otherwise.
  assert.deepEqual(tok.encode('<|endoftext|>'), [0]);
  assert.deepEqual(tok.encode('a<end_of_sentence>b'), [...tok.encode('a'), 3, ...tok.encode('b')]);
  assert.ok(tok.encode('<|endoftext|>', { parseSpecialTokens: false }).length > 1);
  assert.equal(tok.decode([5, 0, 6], { skipSpecialTokens: true }), tok.decode([5, 6]));
});

test('special-token strings in training text are never merged into other tokens', () => {
  const text = '<|endoftext|>'.repeat(50) + ' word'.repeat(10);
  const model = trainBpe([text], { vocabSize: 300, specialTokens: ['<|endoftext|>'] });
  for (const t of model.tokens.slice(257)) assert.ok(!t.includes('|') && !t.includes('<'), t);
});

test('tokenizer_config options and bad options are refused with InvalidArgumentError', async () => {
  assert.throws(() => new BpeTrainer({ vocabSize: 100 }), InvalidArgumentError);
  assert.throws(() => new BpeTrainer({ vocabSize: 1000, specialTokens: ['<a>', '<a>'] }), /listed twice/);
  assert.throws(() => new BpeTrainer({ vocabSize: 1000, specialTokens: [''] }), InvalidArgumentError);
  assert.throws(() => new BpeTrainer({ vocabSize: 1000, minFrequency: 0 }), InvalidArgumentError);
  assert.throws(() => new BpeTrainer({ vocabSize: 1000.5 }), InvalidArgumentError);
  const model = trainBpe(['tiny text'], { vocabSize: 400 });
  await assert.rejects(writeTokenizer(path.join(tmp, 'bad'), model, { eosToken: '<nope>' }), InvalidArgumentError);
  const dir = path.join(tmp, 'chat');
  await writeTokenizer(dir, model, { bosToken: '<begin_of_document>', chatTemplate: '{{ bos_token }}{{ messages[0].content[0].text }}' });
  const tok = await Tokenizer.fromDir(dir);
  assert.equal(tok.bosTokenId, 1);
  assert.equal(tok.renderChat([{ role: 'user', content: 'hi' }]), '<begin_of_document>hi');
});
