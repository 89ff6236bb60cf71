/** Small helpers shared by the GPU benchmark scripts. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** Today's date as YYYY-MM-DD (UTC), the results files' `date`. */
export const today = (): string => new Date().toISOString().slice(0, 10);

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** $LMOE_COMMIT (set it on the device, whose checkout's HEAD may be stale), else `git rev-parse --short HEAD`. */
export function gitCommit(): string {
  if (process.env.LMOE_COMMIT) return process.env.LMOE_COMMIT;
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() || 'unknown';
  } catch {
    return 'unknown';
  }
}

/** A result row of bench/results/h200.json. */
export interface ResultEntry {
  name: string;
  value: number;
  unit: string;
  baseline: { name: string; value: number } | null;
  details?: Record<string, unknown>;
}

/**
 * Merges entries into $LMOE_BENCH_OUT (default bench/results/h200.json) by metric name, leaving the other rows as
 * they are; returns the file written.
 */
export function mergeResults(entries: ResultEntry[], gpu: string): string {
  const file = process.env.LMOE_BENCH_OUT ?? path.join('bench', 'results', 'h200.json');
  const cur = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : { date: today(), commit: gitCommit(), gpu, results: [] };
  const names = new Set(entries.map((e) => e.name));
  cur.results = [...(cur.results as ResultEntry[]).filter((r) => !names.has(r.name)), ...entries];
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(cur, null, 2) + '\n');
  return file;
}
