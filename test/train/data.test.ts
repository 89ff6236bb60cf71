/**
 * Tests for src/train/data.ts: packing invariants on a corpus whose tokens are all distinct (so every id names its
 * place in the corpus), determinism and resumption, the document split, and corpus loading (.txt / .jsonl, cache,
 * long documents, bad input) through the project's tokenizer.
 */

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  BatchLoader,
  allDocuments,
  corpusFromDocuments,
  evaluationBatches,
  loadCorpus,
  splitDocuments,
  type Batch,
  type Corpus,
  type CorpusTokenizer,
  type DocumentSet,
} from '../../src/train/data.js';
import { trainBpe, writeTokenizer } from '../../src/train/bpe.js';
import { Tokenizer } from '../../src/tokenizer/index.js';
import { InvalidArgumentError } from '../../src/util/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-data-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const EOT = 0;

/** Documents of the given lengths (before the end-of-text token) with distinct ids 1, 2, 3, ... */
function uniqueCorpus(lengths: number[]): Corpus {
  let next = 1;
  return corpusFromDocuments(
    lengths.map((n) => Array.from({ length: n }, () => next++)),
    EOT,
    `unique-${lengths.join(',')}`,
  );
}

const LENGTHS = [0, 1, 2, 5, 7, 8, 9, 15, 16, 17, 31, 40, 63, 100, 3, 3, 3, 12, 55, 1, 20, 64, 65];
const CORPUS = uniqueCorpus(LENGTHS);
const OPTIONS = { tokensPerBatch: 64, maxSeqLen: 16, seed: 7 };

/** Where each non-EOT id sits in the corpus (index into CORPUS.tokens) and the document holding each index. */
const where = new Map<number, number>();
CORPUS.tokens.forEach((id, i) => {
  if (id !== EOT) where.set(id, i);
});
const docOf = new Int32Array(CORPUS.tokens.length);
for (let d = 0; d < CORPUS.documentCount; d++) docOf.fill(d, CORPUS.offsets[d], CORPUS.offsets[d + 1]);

/** Corpus index of each position of a batch (EOT positions are found from the token before them). */
function corpusIndices(b: Batch): number[] {
  const out: number[] = [];
  for (let k = 0; k < b.count; k++) {
    for (let t = b.offsets[k]; t < b.offsets[k + 1]; t++) {
      if (b.ids[t] !== EOT) out.push(where.get(b.ids[t])!);
      else if (t > b.offsets[k]) out.push(out[out.length - 1] + 1);
      else {
        // A piece made of the EOT alone: its document is the one whose end is this piece. Find it by elimination below.
        out.push(-1);
      }
    }
  }
  return out;
}

function checkBatch(b: Batch, set: DocumentSet, opts: { tokensPerBatch: number; maxSeqLen: number }): void {
  const T = b.ids.length;
  assert.ok(T >= 1 && T <= opts.tokensPerBatch);
  for (const a of [b.targets, b.positions]) assert.equal(a.length, T);
  assert.equal(b.offsets.length, b.count + 1);
  assert.equal(b.offsets[0], 0);
  assert.equal(b.offsets[b.count], T);
  let maxLength = 0;
  let targets = 0;
  for (let k = 0; k < b.count; k++) {
    const n = b.offsets[k + 1] - b.offsets[k];
    assert.ok(n >= 1 && n <= opts.maxSeqLen, `piece length ${n}`);
    maxLength = Math.max(maxLength, n);
    for (let t = b.offsets[k]; t < b.offsets[k + 1]; t++) assert.equal(b.positions[t], t - b.offsets[k]);
  }
  assert.equal(b.maxLength, maxLength);
  const idx = corpusIndices(b);
  for (let t = 0; t < T; t++) {
    if (b.targets[t] >= 0) targets++;
    const isDocEnd = b.ids[t] === EOT; // EOT appears exactly at document ends in this corpus
    assert.equal(b.targets[t] === -1, isDocEnd, `target at ${t}`);
    if (!isDocEnd) assert.equal(b.targets[t], CORPUS.tokens[idx[t] + 1]);
  }
  assert.equal(b.targetCount, targets);
  // Each piece is whole: it starts at its document's start or a multiple of maxSeqLen into it, is contiguous, and has
  // the length the cut gives.
  for (let k = 0; k < b.count; k++) {
    const first = idx[b.offsets[k]];
    const n = b.offsets[k + 1] - b.offsets[k];
    if (first === -1) {
      assert.equal(n, 1);
      continue;
    }
    const d = docOf[first];
    assert.ok(set.documents.includes(d));
    const start = CORPUS.offsets[d];
    const end = CORPUS.offsets[d + 1];
    assert.equal((first - start) % opts.maxSeqLen, 0);
    assert.equal(n, Math.min(opts.maxSeqLen, end - first));
    for (let t = b.offsets[k]; t < b.offsets[k + 1]; t++) assert.equal(idx[t], first + (t - b.offsets[k]));
  }
}

/** The batches of one epoch. */
function epochBatches(loader: BatchLoader): Batch[] {
  const epoch = loader.state().cursor >= loader.pieceCount ? loader.epoch + 1 : loader.epoch;
  const out: Batch[] = [];
  do {
    const b = loader.next();
    assert.equal(b.epoch, epoch);
    out.push(b);
  } while (loader.state().cursor < loader.pieceCount);
  return out;
}

function flat(batches: Batch[]): number[] {
  return batches.flatMap((b) => [...b.ids]);
}

test('an epoch serves every token exactly once, in whole pieces, with correct targets, positions and offsets', () => {
  for (const opts of [OPTIONS, { tokensPerBatch: 16, maxSeqLen: 16, seed: 1 }, { tokensPerBatch: 100, maxSeqLen: 7, seed: 2 }, { tokensPerBatch: 5, maxSeqLen: 1, seed: 3 }]) {
    const set = allDocuments(CORPUS);
    const loader = new BatchLoader(set, opts);
    for (let epoch = 0; epoch < 3; epoch++) {
      const batches = epochBatches(loader);
      for (const b of batches) checkBatch(b, set, opts);
      const ids = flat(batches);
      assert.equal(ids.length, CORPUS.tokens.length);
      assert.deepEqual(ids.filter((id) => id !== EOT).sort((a, b) => a - b), [...CORPUS.tokens].filter((id) => id !== EOT).sort((a, b) => a - b));
      assert.equal(ids.filter((id) => id === EOT).length, CORPUS.documentCount);
      // Greedy packing: a batch closes only when the next piece does not fit.
      for (let i = 0; i + 1 < batches.length; i++) {
        assert.ok(batches[i].ids.length + (batches[i + 1].offsets[1] - batches[i + 1].offsets[0]) > opts.tokensPerBatch);
      }
    }
    assert.equal(loader.tokenCount, CORPUS.tokens.length);
  }
});

test('shuffling is deterministic per seed, differs between seeds and epochs; shuffle: false keeps document order', () => {
  const a = new BatchLoader(CORPUS, OPTIONS);
  const b = new BatchLoader(CORPUS, OPTIONS);
  const c = new BatchLoader(CORPUS, { ...OPTIONS, seed: 8 });
  const a0 = flat(epochBatches(a));
  assert.deepEqual(a0, flat(epochBatches(b)));
  assert.notDeepEqual(a0, flat(epochBatches(c)));
  assert.notDeepEqual(a0, flat(epochBatches(a)));
  const ordered = new BatchLoader(CORPUS, { ...OPTIONS, shuffle: false });
  assert.deepEqual(flat(epochBatches(ordered)), [...CORPUS.tokens]);
  assert.deepEqual(flat(epochBatches(ordered)), [...CORPUS.tokens]);
  assert.deepEqual(flat([...evaluationBatches(CORPUS, { tokensPerBatch: 64, maxSeqLen: 16 })]), [...CORPUS.tokens]);
});

test('resuming from a JSON-serialised state gives the same next batches (also across epochs)', () => {
  const ref = new BatchLoader(CORPUS, OPTIONS);
  const all: Batch[] = [];
  for (let i = 0; i < 40; i++) all.push(ref.next());
  const run = new BatchLoader(CORPUS, OPTIONS);
  for (let k = 0; k < 40; k++) {
    const state = JSON.parse(JSON.stringify(run.state()));
    const resumed = BatchLoader.fromState(CORPUS, OPTIONS, state);
    for (let j = k; j < Math.min(40, k + 6); j++) assert.deepEqual(resumed.next(), all[j], `resume at ${k}, batch ${j}`);
    assert.deepEqual(run.next(), all[k]);
  }
  assert.ok(all[39].epoch >= 2, 'the run crosses epochs');
  // A state from other options or documents is refused.
  const state = run.state();
  assert.throws(() => BatchLoader.fromState(CORPUS, { ...OPTIONS, seed: 8 }, state), InvalidArgumentError);
  assert.throws(() => BatchLoader.fromState(CORPUS, { ...OPTIONS, maxSeqLen: 8 }, state), InvalidArgumentError);
  assert.throws(() => BatchLoader.fromState(CORPUS, OPTIONS, { ...state, cursor: 1e9 }), /cursor/);
  assert.throws(() => BatchLoader.fromState(CORPUS, OPTIONS, { ...state, epoch: -1 }), /epoch/);
});

test('splitDocuments: disjoint, complete, seeded; batches of a split stay in its documents', () => {
  const { train, validation } = splitDocuments(CORPUS, { validationFraction: 0.2, seed: 3 });
  assert.equal(validation.documents.length, Math.round(0.2 * CORPUS.documentCount));
  assert.deepEqual([...train.documents, ...validation.documents].sort((a, b) => a - b), [...allDocuments(CORPUS).documents]);
  assert.equal(train.tokenCount + validation.tokenCount, CORPUS.tokens.length);
  assert.deepEqual(splitDocuments(CORPUS, { validationFraction: 0.2, seed: 3 }).validation.documents, validation.documents);
  assert.notDeepEqual(splitDocuments(CORPUS, { validationFraction: 0.2, seed: 4 }).validation.documents, validation.documents);
  assert.equal(splitDocuments(CORPUS, { validationFraction: 0.001 }).validation.documents.length, 1);
  for (const set of [train, validation]) {
    const loader = new BatchLoader(set, OPTIONS);
    const batches = epochBatches(loader);
    for (const b of batches) checkBatch(b, set, OPTIONS);
    assert.equal(flat(batches).length, set.tokenCount);
  }
  assert.throws(() => splitDocuments(CORPUS, { validationFraction: 1 }), InvalidArgumentError);
  assert.throws(() => splitDocuments(uniqueCorpus([3]), { validationFraction: 0.5 }), InvalidArgumentError);
});

test('loader options are checked', () => {
  assert.throws(() => new BatchLoader(CORPUS, { tokensPerBatch: 8, maxSeqLen: 16 }), /maxSeqLen/);
  assert.throws(() => new BatchLoader(CORPUS, { tokensPerBatch: 0, maxSeqLen: 1 }), /tokensPerBatch/);
  assert.throws(() => new BatchLoader(CORPUS, { tokensPerBatch: 8, maxSeqLen: 4, seed: -1 }), /seed/);
  assert.throws(() => new BatchLoader(CORPUS, { tokensPerBatch: 8, maxSeqLen: 4, seed: 0.5 }), InvalidArgumentError);
});

// ---------------------------------------------------------------------------------------------------------------
// Loading through the project's tokenizer

const TEXTS = [
  'Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse.',
  'The State of the Union is sound. “Quotes”, émigrés, 😀 and <|endoftext|> as plain text.\n\nA second paragraph.',
  'Short.',
];

async function trainedTokenizer(): Promise<Tokenizer> {
  const model = trainBpe([TEXTS.join('\n').repeat(20)], { vocabSize: 400 });
  const dir = path.join(tmp, 'tok');
  await writeTokenizer(dir, model);
  return Tokenizer.fromDir(dir);
}

/** Wraps a tokenizer, counting encode calls. */
function counting(tok: Tokenizer): CorpusTokenizer & { calls: number } {
  const w = {
    calls: 0,
    vocabSize: tok.vocabSize,
    eosToken: tok.eosToken,
    encode(text: string, options?: { parseSpecialTokens?: boolean }): number[] {
      w.calls++;
      return tok.encode(text, options);
    },
    tokenToId: (t: string) => tok.tokenToId(t),
    idToToken: (id: number) => tok.idToToken(id),
  };
  return w;
}

test('loadCorpus reads .txt (one document per file) and .jsonl (one per line), appends EOT, and caches', async () => {
  const tok = await trainedTokenizer();
  const dir = path.join(tmp, 'corpus');
  fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'a.txt'), TEXTS[0]);
  fs.writeFileSync(path.join(dir, 'sub', 'b.jsonl'), `${JSON.stringify({ text: TEXTS[1], meta: 1 })}\r\n\n${JSON.stringify({ text: TEXTS[2] })}\n`);
  fs.writeFileSync(path.join(dir, 'ignored.md'), 'not read');
  const cacheDir = path.join(tmp, 'cache');

  const w = counting(tok);
  const corpus = await loadCorpus([dir], w, { cacheDir });
  assert.equal(corpus.documentCount, 3);
  assert.equal(corpus.eotId, tok.tokenToId('<|endoftext|>'));
  assert.ok(w.calls >= 3);
  for (let d = 0; d < 3; d++) {
    const ids = [...corpus.tokens.subarray(corpus.offsets[d], corpus.offsets[d + 1])];
    assert.equal(ids[ids.length - 1], corpus.eotId);
    assert.equal(ids.filter((id) => id === corpus.eotId).length, 1, 'special strings in text are not control tokens');
    assert.equal(tok.decode(ids.slice(0, -1)), TEXTS[d]);
  }
  assert.equal(fs.readdirSync(cacheDir).length, 1);

  const w2 = counting(tok);
  const again = await loadCorpus([dir], w2, { cacheDir });
  assert.equal(w2.calls, 1, 'only the fingerprint probe is encoded on a cache hit');
  assert.deepEqual(again, corpus);
  // Different content or a different end-of-text token is a different key.
  fs.writeFileSync(path.join(dir, 'a.txt'), TEXTS[0] + '!');
  const changed = await loadCorpus([dir], tok, { cacheDir });
  assert.notEqual(changed.key, corpus.key);
  const otherEot = await loadCorpus([dir], tok, { cacheDir, eotToken: '<end_of_sentence>' });
  assert.equal(otherEot.eotId, tok.tokenToId('<end_of_sentence>'));
  assert.equal(fs.readdirSync(cacheDir).length, 3);
  // A corrupt cache file is ignored and rewritten.
  const file = path.join(cacheDir, `corpus-${changed.key.slice(0, 32)}.bin`);
  const size = fs.statSync(file).size;
  fs.truncateSync(file, 40);
  const w3 = counting(tok);
  assert.deepEqual(await loadCorpus([dir], w3, { cacheDir }), changed);
  assert.ok(w3.calls > 1);
  assert.equal(fs.statSync(file).size, size);
});

test('documents over the encode chunk are tokenised as one text', async () => {
  const tok = await trainedTokenizer();
  const unit = 'Some years ago—never mind how long precisely—having  little or no money, 1234 😀. ';
  const text = unit.repeat(Math.ceil((1 << 20) * 1.3 / unit.length));
  const file = path.join(tmp, 'long.txt');
  fs.writeFileSync(file, text);
  const corpus = await loadCorpus([file], tok);
  assert.deepEqual([...corpus.tokens.subarray(0, -1)], tok.encode(text, { parseSpecialTokens: false }));
});

test('bad input: missing file, bad extension, JSONL line without "text", invalid JSON, no documents', async () => {
  const tok = await trainedTokenizer();
  const missing = path.join(tmp, 'nope.jsonl');
  await assert.rejects(loadCorpus([missing], tok), (e: unknown) => e instanceof InvalidArgumentError && e.message.includes(missing) && /not found/.test(e.message));
  const md = path.join(tmp, 'x.md');
  fs.writeFileSync(md, 'x');
  await assert.rejects(loadCorpus([md], tok), /expected a \.txt or \.jsonl file/);
  const bad = path.join(tmp, 'bad.jsonl');
  fs.writeFileSync(bad, `{"text": "ok"}\n\n{"txt": "no text field"}\n{"text": "later"}\n`);
  await assert.rejects(loadCorpus([bad], tok), (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError);
    assert.equal(e.message, `${bad}:3: expected a JSON object with a string "text" field`);
    return true;
  });
  fs.writeFileSync(bad, `{"text": "ok"}\n{"text": 5}\n`);
  await assert.rejects(loadCorpus([bad], tok), new RegExp(`bad\\.jsonl:2: expected a JSON object`));
  fs.writeFileSync(bad, `{"text": "ok"}\n{"text": "unterminated}\n`);
  await assert.rejects(loadCorpus([bad], tok), (e: unknown) => e instanceof InvalidArgumentError && e.message.startsWith(`${bad}:2: not valid JSON`));
  const empty = path.join(tmp, 'empty.jsonl');
  fs.writeFileSync(empty, '\n\n');
  await assert.rejects(loadCorpus([empty], tok), /no documents/);
  await assert.rejects(loadCorpus([], tok), InvalidArgumentError);
  await assert.rejects(loadCorpus([empty], tok, { eotToken: '<missing>' }), /no end-of-text token/);
});
