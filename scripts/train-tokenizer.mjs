#!/usr/bin/env node
// Trains a byte-level BPE tokenizer on .txt / .jsonl files and writes tokenizer.json + tokenizer_config.json.
//
// Usage: node scripts/train-tokenizer.mjs [--vocab 4096] [--out models/<name>] [--chat-template FILE] [inputs...]
//   inputs default to data/corpus.jsonl (see scripts/fetch-corpus.mjs); --out defaults to models/moe-tiny-v<vocab>.
//   --chat-template takes a Jinja file, or a tokenizer_config.json whose chat_template is copied.
// Needs `npm run build` first (uses dist/src/train/bpe.js).
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { BpeTrainer, writeTokenizer } from '../dist/src/train/bpe.js';
import { Tokenizer } from '../dist/src/tokenizer/index.js';

const args = process.argv.slice(2);
const take = (flag, fallback) => {
  const i = args.indexOf(flag);
  if (i < 0) return fallback;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const vocabSize = Number(take('--vocab', '4096'));
const out = take('--out', `models/moe-tiny-v${vocabSize}`);
const templateFile = take('--chat-template', undefined);
const inputs = args.length > 0 ? args : ['data/corpus.jsonl'];

let chatTemplate;
if (templateFile !== undefined) {
  const text = fs.readFileSync(templateFile, 'utf8');
  chatTemplate = templateFile.endsWith('.json') ? JSON.parse(text).chat_template : text;
}

const t0 = performance.now();
const trainer = new BpeTrainer({
  vocabSize,
  onProgress: (merges, vocab) => console.log(`  ${merges} merges, vocab ${vocab}`),
  progressEvery: 1000,
});
let bytes = 0;
let docs = 0;
for (const file of inputs) {
  if (file.endsWith('.jsonl')) {
    const rl = readline.createInterface({ input: fs.createReadStream(file, 'utf8'), crlfDelay: Infinity });
    let line = 0;
    for await (const l of rl) {
      line++;
      if (l.trim() === '') continue;
      const v = JSON.parse(l);
      if (typeof v?.text !== 'string') throw new Error(`${file}:${line}: expected a JSON object with a string "text" field`);
      trainer.add(v.text);
      bytes += Buffer.byteLength(v.text);
      docs++;
    }
  } else {
    const text = fs.readFileSync(file, 'utf8');
    trainer.add(text);
    bytes += Buffer.byteLength(text);
    docs++;
  }
}
const t1 = performance.now();
console.log(`read ${docs} documents, ${(bytes / 1e6).toFixed(1)} MB in ${((t1 - t0) / 1000).toFixed(1)} s`);
const model = trainer.train();
const s = trainer.stats;
console.log(`trained ${s.merges} merges over ${s.uniqueWords} unique words (${s.totalWords} words) in ${s.seconds.toFixed(1)} s`);
const file = await writeTokenizer(out, model, { chatTemplate });

// Check: it loads through the project's tokenizer and round-trips a sample.
const tok = await Tokenizer.fromDir(out);
const sample = 'Call me Ishmael. “Ünïcödé” — 😀 <|endoftext|>\n\n\tend';
if (tok.decode(tok.encode(sample, { parseSpecialTokens: false })) !== sample) throw new Error('round trip failed');
console.log(`wrote ${file} (${fs.statSync(file).size} bytes, vocab ${tok.vocabSize}, eos ${tok.eosToken} = ${tok.eosTokenId})`);
console.log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
