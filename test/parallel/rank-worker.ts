/** One rank of a simulated parallel group (a worker thread): loads its shard, runs the script, posts the result. */
import { parentPort, workerData } from 'node:worker_threads';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { loadRank } from '../../src/parallel/load.js';
import { parallelContext } from '../../src/parallel/shard.js';
import { ThreadCommunicator, type ThreadCommunicatorShared } from '../../src/parallel/thread-communicator.js';
import { runScript, type ScriptInput } from './script.js';

export interface RankWorkerData {
  readonly dir: string;
  readonly rank: number;
  readonly shared: ThreadCommunicatorShared;
  readonly mode: { tp: boolean; ep: boolean };
  readonly input: ScriptInput;
}

const data = workerData as RankWorkerData;
const backend = new CpuBackend();
const comm = new ThreadCommunicator(data.rank, data.shared, backend, 60_000);
const model = await loadRank(data.dir, backend, parallelContext(comm, data.mode));
const out = runScript(model, data.input);
model.dispose();
parentPort!.postMessage(out);
