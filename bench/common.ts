/** Small helpers shared by the GPU benchmark scripts. */
import { execFileSync } from 'node:child_process';

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
