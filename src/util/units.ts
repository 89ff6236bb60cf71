/**
 * Human sizes in and out: token counts such as `4M` (= 4·2^20) or `1.5M`, byte sizes such as `141GB` (decimal) or
 * `139.7GiB` (binary), and byte counts printed in binary units (`151.2 GiB`).
 *
 * Parsing is exact: the decimal digits are scaled with BigInt, so `1.5M` is 1,572,864 and `139.7GiB` is
 * floor(139.7 · 2^30) with no binary rounding of 139.7 on the way. Errors are InvalidArgumentErrors whose message
 * says what was expected; the CLI prefixes the flag.
 */

import { InvalidArgumentError } from './errors.js';

/** Token-count suffixes: binary, as context lengths are quoted (a "1M context" is 2^20 tokens). */
const TOKEN_UNITS: Readonly<Record<string, bigint>> = { '': 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n };

/** Byte-size units: SI (powers of 1000) and IEC (powers of 1024). A bare number is bytes. */
const BYTE_UNITS: Readonly<Record<string, bigint>> = {
  '': 1n,
  b: 1n,
  kb: 1000n,
  mb: 1000n ** 2n,
  gb: 1000n ** 3n,
  tb: 1000n ** 4n,
  kib: 1n << 10n,
  mib: 1n << 20n,
  gib: 1n << 30n,
  tib: 1n << 40n,
};

const NUMBER_WITH_UNIT = /^(\d+)(?:\.(\d+))?\s*([a-z]*)$/i;

/** `text` as a decimal number times a unit: [numerator, denominator] with the unit applied, or undefined. */
function scaled(text: string, units: Readonly<Record<string, bigint>>): { num: bigint; den: bigint } | undefined {
  const m = NUMBER_WITH_UNIT.exec(text.trim());
  if (!m) return undefined;
  const unit = units[m[3].toLowerCase()];
  if (unit === undefined) return undefined;
  const frac = m[2] ?? '';
  return { num: BigInt(m[1] + frac) * unit, den: 10n ** BigInt(frac.length) };
}

/**
 * A token count: an integer (`65536`) or a number with a binary suffix K, M or G (`64K`, `4M`, `1.5M`),
 * case-insensitive. Must be a whole number of tokens ≥ 1 and a safe integer.
 */
export function parseTokenCount(text: string): number {
  const expected = 'a token count such as 65536, 64K, 1M or 1.5M';
  const v = scaled(text, TOKEN_UNITS);
  if (!v) throw new InvalidArgumentError(`expected ${expected}, got "${text}"`);
  if (v.num % v.den !== 0n) throw new InvalidArgumentError(`"${text}" is not a whole number of tokens (${ratio(v.num, v.den)})`);
  return checkedCount(v.num / v.den, text, 'tokens');
}

/**
 * A byte size: an integer number of bytes, or a number with an SI unit (KB, MB, GB, TB: powers of 1000) or an IEC
 * unit (KiB, MiB, GiB, TiB: powers of 1024), case-insensitive, e.g. `141GB`, `139.7GiB`. Fractions of a byte are
 * dropped. Must be ≥ 1 byte and a safe integer.
 */
export function parseByteSize(text: string): number {
  const v = scaled(text, BYTE_UNITS);
  if (!v) throw new InvalidArgumentError(`expected a size such as 141GB, 139.7GiB or 80000000000 (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got "${text}"`);
  return checkedCount(v.num / v.den, text, 'bytes');
}

function checkedCount(n: bigint, text: string, what: string): number {
  if (n < 1n) throw new InvalidArgumentError(`"${text}" is less than 1 ${what === 'tokens' ? 'token' : 'byte'}`);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError(`"${text}" is too large (more than 2^53 − 1 ${what})`);
  return Number(n);
}

function ratio(num: bigint, den: bigint): string {
  return String(Number(num) / Number(den));
}

/** Bytes in binary units with one decimal: `512 B`, `3.0 KiB`, `280.0 MiB`, `151.2 GiB`, `1.1 TiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0, v = bytes;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${bytes} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** An integer with thousands separators: 4,194,304. */
export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}
