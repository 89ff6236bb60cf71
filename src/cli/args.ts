/**
 * Command-line parsing shared by the `lmoe` commands: node's util.parseArgs (strict: unknown flags are errors)
 * plus typed converters whose errors name the flag. A UsageError makes the CLI print one line and exit 2.
 */

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { LightningMoeError } from '../util/errors.js';

/** Bad command-line usage: printed as one line with a pointer to --help, exit status 2. */
export class UsageError extends LightningMoeError {
  constructor(message: string, readonly command?: string) {
    super('INVALID_ARGUMENT', message, { hint: command ? `see: lmoe ${command} --help` : 'see: lmoe --help' });
  }
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export function parse(command: string, argv: string[], options: OptionSpec): Record<string, string | boolean | string[] | undefined> {
  try {
    const { values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
    return values as Record<string, string | boolean | string[] | undefined>;
  } catch (e) {
    // parseArgs messages are multi-sentence; keep the first one.
    const msg = (e as Error).message.split('. ')[0].replace(/\.$/, '');
    throw new UsageError(msg, command);
  }
}

export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function int(v: unknown, flag: string, min: number, command: string): number | undefined {
  if (v === undefined) return undefined;
  const s = String(v).trim();
  const n = Number(s);
  if (s === '' || !Number.isSafeInteger(n) || n < min) throw new UsageError(`--${flag}: expected an integer ≥ ${min}, got "${v}"`, command);
  return n;
}

export function num(v: unknown, flag: string, command: string, check?: (x: number) => boolean, range?: string): number | undefined {
  if (v === undefined) return undefined;
  const s = String(v).trim();
  const n = Number(s);
  if (s === '' || !Number.isFinite(n) || (check && !check(n))) {
    throw new UsageError(`--${flag}: expected a number${range ? ' in ' + range : ''}, got "${v}"`, command);
  }
  return n;
}

/** "1,2, 3" → [1, 2, 3]. */
export function idList(v: unknown, flag: string, command: string): number[] | undefined {
  if (v === undefined) return undefined;
  const parts = String(v).split(',').map((p) => p.trim());
  if (parts.length === 1 && parts[0] === '') throw new UsageError(`--${flag}: expected comma-separated token ids, got an empty list`, command);
  return parts.map((p) => {
    const n = Number(p);
    if (p === '' || !Number.isSafeInteger(n) || n < 0) throw new UsageError(`--${flag}: "${p}" is not a token id (expected comma-separated integers ≥ 0)`, command);
    return n;
  });
}

export function list(v: unknown): string[] {
  return Array.isArray(v) ? v.map(String) : typeof v === 'string' ? [v] : [];
}
