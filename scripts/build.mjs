// Build: clean dist/, type-check and compile with tsc, ship the CUDA kernel sources next to their loader, and make
// the CLI executable. Run by `npm run build` (and by `npm ci` through the prepare script).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

fs.rmSync('dist', { recursive: true, force: true });
// npm puts node_modules/.bin on PATH for scripts, so `tsc` is the project's own TypeScript.
try {
  execFileSync('tsc', ['-p', 'tsconfig.json'], { stdio: 'inherit' });
} catch {
  process.exit(1); // tsc has printed the errors
}
fs.cpSync('src/backend/cuda/kernels', 'dist/src/backend/cuda/kernels', { recursive: true });
fs.chmodSync('dist/src/cli/main.js', 0o755);
