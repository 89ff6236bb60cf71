/** Paths for tests. Tests run from dist/test/**, so the repo root is found relative to this compiled file. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/test/helpers/paths.js is three levels below the repository root. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures');
