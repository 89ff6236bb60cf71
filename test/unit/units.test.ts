/**
 * Human sizes (src/util/units.ts): token counts with binary suffixes (4M = 4·2^20, 1.5M, 64K), byte sizes in SI and
 * IEC units parsed exactly (139.7GiB without binary rounding of 139.7), every malformed input refused with an
 * InvalidArgumentError that quotes it, and byte counts printed in binary units.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatBytes, parseByteSize, parseTokenCount } from '../../src/util/units.js';
import { InvalidArgumentError } from '../../src/util/errors.js';

test('parseTokenCount: integers and K/M/G suffixes (binary), fractions that make whole tokens', () => {
  const cases: [string, number][] = [
    ['65536', 65536],
    ['1', 1],
    ['64K', 65536],
    ['64k', 65536],
    ['1M', 1_048_576],
    ['4M', 4_194_304],
    ['4m', 4_194_304],
    ['1.5M', 1_572_864],
    ['0.5K', 512],
    ['8M', 8_388_608],
    ['2G', 2_147_483_648],
    [' 4M ', 4_194_304],
    ['16384', 16384],
  ];
  for (const [text, want] of cases) assert.equal(parseTokenCount(text), want, text);
});

test('parseTokenCount: malformed, fractional, zero and too large inputs are refused, quoting the input', () => {
  for (const text of ['', 'M', '4X', '4MB', '-1', '1e6', '4 M M', '1,000', '0x10', '.5M', '4.M', 'four']) {
    assert.throws(() => parseTokenCount(text), (e: unknown) => e instanceof InvalidArgumentError && e.message.includes(`"${text}"`) && e.message.includes('token count'), text);
  }
  assert.throws(() => parseTokenCount('1.3K'), /not a whole number of tokens \(1331\.2\)/);
  assert.throws(() => parseTokenCount('0'), /less than 1 token/);
  assert.throws(() => parseTokenCount('0.0M'), /less than 1 token/);
  assert.throws(() => parseTokenCount('9007199254740992'), /too large/);
  assert.equal(parseTokenCount('9007199254740991'), Number.MAX_SAFE_INTEGER);
});

test('parseByteSize: SI and IEC units, exact decimal scaling, bare bytes', () => {
  const cases: [string, number][] = [
    ['141GB', 141_000_000_000],
    ['141 GB', 141_000_000_000],
    ['141gb', 141_000_000_000],
    ['139.7GiB', 150_001_732_812], // floor(139.7 · 2^30) = floor(150001732812.8)
    ['80GiB', 80 * 2 ** 30],
    ['143771MiB', 143_771 * 2 ** 20],
    ['1TB', 1e12],
    ['1.5TiB', 1.5 * 2 ** 40],
    ['512', 512],
    ['512B', 512],
    ['2KiB', 2048],
    ['2KB', 2000],
  ];
  for (const [text, want] of cases) assert.equal(parseByteSize(text), want, text);
  // 139.7 is not a binary fraction: a float product would give …812.799… and could floor differently elsewhere
  assert.equal(parseByteSize('0.1GiB'), 107_374_182);
});

test('parseByteSize: malformed sizes and unknown units are refused, listing the accepted units', () => {
  for (const text of ['', 'GB', '141G', '141 gigabytes', '-5GB', '1e9', 'lots']) {
    assert.throws(() => parseByteSize(text), (e: unknown) => e instanceof InvalidArgumentError && e.message.includes(`"${text}"`) && e.message.includes('GiB'), text);
  }
  assert.throws(() => parseByteSize('0GB'), /less than 1 byte/);
  assert.throws(() => parseByteSize('0.1B'), /less than 1 byte/);
  assert.throws(() => parseByteSize('9008TB'), /too large/);
});

test('formatBytes: binary units with one decimal', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(1024), '1.0 KiB');
  assert.equal(formatBytes(293_601_280), '280.0 MiB');
  assert.equal(formatBytes(171_798_691_840), '160.0 GiB');
  assert.equal(formatBytes(150_001_732_812), '139.7 GiB');
  assert.equal(formatBytes(2 ** 40 * 1.25), '1.3 TiB');
});
