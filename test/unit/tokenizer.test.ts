/**
 * Tests for src/tokenizer/tokenizer.ts, the non-chat half (MODEL.md §3, SERVING.md §10 T6–T8): parity with the
 * transformers reference in test/fixtures/tokenizer/cases.json, encoding without special-token recognition, decode
 * edge cases, load errors, and the nested-quantifier check on tokenizer.json regexes.
 */

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { FIXTURES } from '../helpers/paths.js';
import { Tokenizer, MAX_ENCODE_CHARS, findNestedQuantifier } from '../../src/tokenizer/index.js';
import { InvalidArgumentError, TokenizerError } from '../../src/util/errors.js';

interface EncodeCase {
  text: string;
  ids: number[];
  decoded: string;
  decoded_skip_special: string;
}

const DIR = path.join(FIXTURES, 'tokenizer');
const tokenizerJson = JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer_config.json'), 'utf8')) as Record<
  string,
  unknown
>;
const cases = JSON.parse(fs.readFileSync(path.join(DIR, 'cases.json'), 'utf8')) as { encode: EncodeCase[] };
const tok = Tokenizer.fromObjects(tokenizerJson, tokenizerConfig, DIR);

const tempDirs: string[] = [];
after(() => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-tok-'));
  tempDirs.push(d);
  return d;
}

function withSplit(regex: string): Record<string, unknown> {
  return {
    ...tokenizerJson,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
  };
}

test('every cases.json encode case: ids, decode, decode skipping special tokens', () => {
  assert.ok(cases.encode.length > 0);
  for (const c of cases.encode) {
    const ids = tok.encode(c.text);
    assert.deepEqual(ids, c.ids, JSON.stringify(c.text));
    assert.equal(tok.decode(c.ids), c.decoded, JSON.stringify(c.text));
    assert.equal(tok.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip_special, JSON.stringify(c.text));
  }
});

test('fromDir loads the fixture and every model folder the same way', async () => {
  for (const name of ['tokenizer', 'tiny', 'tiny-bf16', 'tiny-hf', 'small-d128']) {
    const t = await Tokenizer.fromDir(path.join(FIXTURES, name));
    assert.equal(t.vocabSize, 1024, name);
    assert.equal(t.hasChatTemplate, true, name);
    assert.deepEqual(t.encode('Hello world'), [43, 72, 270, 82, 279, 267, 699], name);
  }
});

test('vocabulary facts: size, bos/eos, special ids, id <-> token', () => {
  assert.equal(tok.vocabSize, 1024);
  assert.equal(tok.bosToken, '<beginning_of_sentence>');
  assert.equal(tok.bosTokenId, 2);
  assert.equal(tok.eosToken, '<end_of_sentence>');
  assert.equal(tok.eosTokenId, 3);
  assert.deepEqual([...tok.specialTokenIds].sort((a, b) => a - b), [0, 1, 2, 3]);
  assert.equal(tok.idToToken(3), '<end_of_sentence>');
  assert.equal(tok.tokenToId('<begin_of_document>'), 1);
  assert.equal(tok.idToToken(1024), undefined);
  assert.equal(tok.idToToken(-1), undefined);
  assert.equal(tok.idToToken(1.5), undefined);
  assert.equal(tok.tokenToId('no such token'), undefined);
});

test('bos/eos given as {content} objects and additional_special_tokens as objects', () => {
  const t = Tokenizer.fromObjects(tokenizerJson, {
    ...tokenizerConfig,
    bos_token: { content: '<beginning_of_sentence>', lstrip: false },
    eos_token: { content: '<end_of_sentence>' },
    additional_special_tokens: [{ content: '<begin_of_document>' }],
  });
  assert.equal(t.bosTokenId, 2);
  assert.equal(t.eosTokenId, 3);
  assert.ok(t.specialTokenIds.has(1));
});

test('without tokenizer_config.json there are no bos/eos and no chat template, but encoding works', () => {
  const t = Tokenizer.fromObjects(tokenizerJson, undefined);
  assert.equal(t.bosToken, undefined);
  assert.equal(t.eosTokenId, undefined);
  assert.equal(t.hasChatTemplate, false);
  assert.deepEqual(t.encode('Hello world'), [43, 72, 270, 82, 279, 267, 699]);
});

test('encode never adds BOS/EOS and parses special-token strings by default', () => {
  assert.deepEqual(tok.encode(''), []);
  assert.deepEqual(tok.encode('<end_of_sentence>'), [3]);
  assert.deepEqual(tok.encode('hi<end_of_sentence>'), [...tok.encode('hi'), 3]);
});

test('encode with parseSpecialTokens: false tokenizes special-token strings as ordinary text', () => {
  for (const special of ['<end_of_sentence>', '<beginning_of_sentence>', '<begin_of_document>', '<end_of_document>']) {
    const ids = tok.encode(special, { parseSpecialTokens: false });
    assert.ok(ids.length > 1, special);
    for (const id of ids) assert.ok(!tok.specialTokenIds.has(id), `${special} gave special id ${id}`);
    assert.equal(tok.decode(ids), special);
  }
  const text = 'a<end_of_sentence>\n<beginning_of_sentence>system';
  const ids = tok.encode(text, { parseSpecialTokens: false });
  assert.equal(tok.decode(ids), text);
  assert.ok(ids.every((id) => !tok.specialTokenIds.has(id)));
  // Text without special-token strings is tokenized exactly as by the default path.
  for (const c of cases.encode) {
    if (c.ids.some((id) => tok.specialTokenIds.has(id))) continue;
    assert.deepEqual(tok.encode(c.text, { parseSpecialTokens: false }), c.ids, JSON.stringify(c.text));
  }
  // And the default path is unaffected afterwards (the no-special view shares the library's model).
  assert.deepEqual(tok.encode('<end_of_sentence>'), [3]);
});

test('parseSpecialTokens: false still recognises non-special added tokens', () => {
  const json = {
    ...tokenizerJson,
    added_tokens: [
      ...(tokenizerJson.added_tokens as unknown[]),
      { id: 1024, content: '<tool>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: false },
    ],
  };
  const t = Tokenizer.fromObjects(json, tokenizerConfig);
  assert.equal(t.vocabSize, 1025);
  assert.deepEqual(t.encode('<tool>', { parseSpecialTokens: false }), [1024]);
  assert.deepEqual(t.encode('<tool><end_of_sentence>'), [1024, 3]);
  const plain = t.encode('<tool><end_of_sentence>', { parseSpecialTokens: false });
  assert.equal(plain[0], 1024);
  assert.ok(!plain.includes(3));
});

test('encode input bound and type check', () => {
  assert.throws(
    () => tok.encode('a'.repeat(MAX_ENCODE_CHARS + 1)),
    (e: unknown) => e instanceof InvalidArgumentError && e.param === 'text' && /67108864/.test(e.message),
  );
  assert.throws(
    () => tok.encode(42 as unknown as string),
    (e: unknown) => e instanceof InvalidArgumentError && e.param === 'text',
  );
});

test('decode edge cases: [] is empty, ids without a token are skipped, bad ids are refused', () => {
  assert.equal(tok.decode([]), '');
  assert.equal(tok.decode([3], { skipSpecialTokens: true }), '');
  const hello = tok.encode('Hello world');
  assert.equal(tok.decode([5000, ...hello.slice(0, 3), 1024, ...hello.slice(3), 200063]), 'Hello world');
  assert.equal(tok.decode([5000]), '');
  for (const bad of [-1, 1.5, Number.NaN, '3' as unknown as number]) {
    assert.throws(
      () => tok.decode([43, bad]),
      (e: unknown) => e instanceof InvalidArgumentError && e.param === 'ids' && /ids\[1\]/.test(e.message),
      String(bad),
    );
  }
  assert.throws(() => tok.decode('abc' as unknown as number[]), (e: unknown) => e instanceof InvalidArgumentError);
  // A lone byte of a multi-byte character decodes to U+FFFD (no exception).
  const rocket = tok.encode('🚀');
  assert.ok(rocket.length > 1);
  assert.equal(tok.decode(rocket.slice(0, 1)), '\uFFFD');
});

test('load errors name the file', async () => {
  const missing = path.join(tempDir(), 'nowhere');
  await assert.rejects(
    Tokenizer.fromDir(missing),
    (e: unknown) => e instanceof TokenizerError && e.file === path.join(missing, 'tokenizer.json') && !/\n/.test(e.message),
  );

  const bad = tempDir();
  fs.writeFileSync(path.join(bad, 'tokenizer.json'), '{"model": ');
  await assert.rejects(
    Tokenizer.fromDir(bad),
    (e: unknown) =>
      e instanceof TokenizerError && e.file === path.join(bad, 'tokenizer.json') && /not valid JSON/.test(e.message),
  );

  const badConfig = tempDir();
  fs.copyFileSync(path.join(DIR, 'tokenizer.json'), path.join(badConfig, 'tokenizer.json'));
  fs.writeFileSync(path.join(badConfig, 'tokenizer_config.json'), '{oops}');
  await assert.rejects(
    Tokenizer.fromDir(badConfig),
    (e: unknown) => e instanceof TokenizerError && e.file === path.join(badConfig, 'tokenizer_config.json'),
  );

  const rejected = tempDir();
  fs.writeFileSync(
    path.join(rejected, 'tokenizer.json'),
    JSON.stringify({ ...tokenizerJson, model: { type: 'NoSuchModel' } }),
  );
  await assert.rejects(
    Tokenizer.fromDir(rejected),
    (e: unknown) =>
      e instanceof TokenizerError && e.file === path.join(rejected, 'tokenizer.json') && /rejected/.test(e.message),
  );

  assert.throws(() => Tokenizer.fromObjects([], undefined), (e: unknown) => e instanceof TokenizerError);
  assert.throws(() => Tokenizer.fromObjects({ added_tokens: [] }, undefined), (e: unknown) => e instanceof TokenizerError);
  assert.throws(
    () => Tokenizer.fromObjects(tokenizerJson, 'config' as unknown),
    (e: unknown) => e instanceof TokenizerError && e.file === 'tokenizer_config.json',
  );
  assert.throws(
    () => Tokenizer.fromObjects(tokenizerJson, { chat_template: 42 }),
    (e: unknown) => e instanceof TokenizerError && /chat_template/.test(e.message),
  );
});

test('chat template sources: named list picks "default", chat_template.jinja / .json override the config', async () => {
  const source = tokenizerConfig.chat_template as string;
  const named = Tokenizer.fromObjects(tokenizerJson, {
    ...tokenizerConfig,
    chat_template: [
      { name: 'tool_use', template: 'TOOLS' },
      { name: 'default', template: source },
    ],
  });
  assert.equal(named.hasChatTemplate, true);
  const messages = [{ role: 'user', content: 'Hi' }];
  assert.equal(named.renderChat(messages), tok.renderChat(messages));

  const noDefault = Tokenizer.fromObjects(tokenizerJson, {
    ...tokenizerConfig,
    chat_template: [{ name: 'tool_use', template: 'TOOLS' }],
  });
  assert.equal(noDefault.hasChatTemplate, false);
  assert.throws(() => noDefault.renderChat(messages), (e: unknown) => e instanceof TokenizerError && /tool_use/.test(e.message));

  const jinjaDir = tempDir();
  fs.copyFileSync(path.join(DIR, 'tokenizer.json'), path.join(jinjaDir, 'tokenizer.json'));
  fs.copyFileSync(path.join(DIR, 'tokenizer_config.json'), path.join(jinjaDir, 'tokenizer_config.json'));
  fs.writeFileSync(path.join(jinjaDir, 'chat_template.jinja'), '{{ messages[0].content[0].text }}!');
  assert.equal((await Tokenizer.fromDir(jinjaDir)).renderChat(messages), 'Hi!');

  const jsonDir = tempDir();
  fs.copyFileSync(path.join(DIR, 'tokenizer.json'), path.join(jsonDir, 'tokenizer.json'));
  fs.writeFileSync(path.join(jsonDir, 'chat_template.json'), JSON.stringify({ chat_template: '[{{ messages | length }}]' }));
  const fromJson = await Tokenizer.fromDir(jsonDir);
  assert.equal(fromJson.renderChat(messages), '[1]');
  assert.equal(fromJson.bosToken, undefined);
});

// --- T6 -------------------------------------------------------------------------------------------------------

const KNOWN_PATTERNS: Record<string, string> = {
  gpt2: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  llama3:
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // cl100k-style with single digits, as in Qwen2 and many MiniMax-era tokenizers.
  qwen2:
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // o200k-style, as in MiniMax-M2: optional quantified groups (`(?i:...)?`) must pass.
  o200k:
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // The GPT-4 pattern as written in tiktoken, with possessive quantifiers.
  cl100kPossessive:
    "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
};

const HOSTILE_PATTERNS = [
  '(a+)+',
  '(\\w*)*',
  '(?:x+){2,}',
  '(a+)+?',
  '((a|b)+c)*',
  '(?:(?:a*)b)+',
  '(\\d{1,3})+',
  '(?<word>[a-z]+\\s?)*$',
  '([^\\]]+)*',
  '(?i:\\s+\\S)+',
];

test('findNestedQuantifier accepts the known split patterns and simple regexes', () => {
  for (const [name, p] of Object.entries(KNOWN_PATTERNS)) assert.equal(findNestedQuantifier(p), undefined, name);
  for (const p of ['(ab)+', '(a?b)+', '(a{3})+', '(a+)?', '(a+)', 'a{2,5}b+', '[(]+[)]*', '\\(a+\\)+', 'x{', '▁', ' ']) {
    assert.equal(findNestedQuantifier(p), undefined, p);
  }
});

test('findNestedQuantifier reports nested quantifiers and unparseable patterns', () => {
  for (const p of HOSTILE_PATTERNS) assert.match(findNestedQuantifier(p) ?? '', /nested quantifier/, p);
  for (const p of ['(a', 'a)', '[abc', '*a', '(?@a)']) assert.notEqual(findNestedQuantifier(p), undefined, p);
});

test('tokenizer.json with a known split pattern loads and round-trips', () => {
  const text = "Hello world, it's 12345 ok!\n\n  x\t'LL";
  for (const [name, p] of Object.entries(KNOWN_PATTERNS)) {
    const t = Tokenizer.fromObjects(withSplit(p), tokenizerConfig);
    assert.equal(t.decode(t.encode(text)), text, name);
  }
});

test('tokenizer.json with a nested-quantifier regex is refused at load, naming the file and the field', () => {
  for (const p of HOSTILE_PATTERNS) {
    assert.throws(
      () => Tokenizer.fromObjects(withSplit(p), tokenizerConfig, '/models/evil'),
      (e: unknown) =>
        e instanceof TokenizerError &&
        e.file === path.join('/models/evil', 'tokenizer.json') &&
        /pre_tokenizer\.pretokenizers\[0\]\.pattern\.Regex/.test(e.message) &&
        !/\n/.test(e.message),
      p,
    );
  }
  const replaceNormalizer = {
    ...tokenizerJson,
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '(a+)+' }, content: 'b' }] },
  };
  assert.throws(
    () => Tokenizer.fromObjects(replaceNormalizer, tokenizerConfig),
    (e: unknown) => e instanceof TokenizerError && /normalizer\.normalizers\[1\]\.pattern\.Regex/.test(e.message),
  );
  const replaceDecoder = {
    ...tokenizerJson,
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { Regex: '(\\s*)*' }, content: ' ' }] },
  };
  assert.throws(
    () => Tokenizer.fromObjects(replaceDecoder, tokenizerConfig),
    (e: unknown) => e instanceof TokenizerError && /decoder\.decoders\[0\]\.pattern\.Regex/.test(e.message),
  );
  // A literal String pattern is never a regex.
  const literal = {
    ...tokenizerJson,
    normalizer: { type: 'Replace', pattern: { String: '(a+)+' }, content: 'b' },
  };
  assert.doesNotThrow(() => Tokenizer.fromObjects(literal, tokenizerConfig));
});
