/** Small helpers shared by the GPU benchmark scripts. */
import { execFileSync } from 'node:child_process';

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
