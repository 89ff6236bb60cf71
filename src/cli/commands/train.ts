/**
 * `lmoe train --config FILE`: trains a MiniMax-01-architecture model from a config file (src/train/config.ts) on
 * the CPU or a GPU, with a progress line, a JSONL log (run.out/log.jsonl), periodic checkpoints that
 * `lmoe generate --model` loads unchanged, and resume. Ctrl-C stops after the current step and writes a checkpoint.
 */

import { countParameters } from '../../config/size.js';
import { loadTrainConfig } from '../../train/config.js';
import { prepareRun } from '../../train/run.js';
import type { StepRecord } from '../../train/trainer.js';
import { formatCount } from '../../util/units.js';
import { int, parse, str, UsageError } from '../args.js';
import { writeOut } from '../common.js';

export const help = `Usage: lmoe train --config FILE [options]

Trains a model of the MiniMax-01 architecture (lightning + softmax attention, MoE) from scratch, as described by a
JSON config (model, tokenizer, data, optim, run: see docs/training.md). Writes run.out/log.jsonl (one JSON record
per logged step: loss, aux losses, learning rate, gradient norm, tokens/s, validation loss), checkpoints in
run.out/checkpoint-<step>/ every run.saveEvery steps and run.out/final/ at the end: config.json + model.safetensors
in the original layout (lmoe generate --model DIR loads them), plus the optimiser state to resume from.

Options:
      --config FILE      the training config (required)
      --resume           continue from the newest checkpoint in run.out (a fresh start when there is none)
      --resume-from DIR  continue from this checkpoint directory
      --device NAME      cpu | cuda (default: run.device from the config)
      --steps N          override optim.steps (the learning-rate schedule's length)
      --quiet            no progress line
      --verbose          print stack traces on errors
  -h, --help             show this help

Example:
  lmoe train --config configs/train/minimax-tiny.json --device cuda`;

export async function run(argv: string[]): Promise<number> {
  const v = parse('train', argv, {
    config: { type: 'string' },
    resume: { type: 'boolean' },
    'resume-from': { type: 'string' },
    device: { type: 'string' },
    steps: { type: 'string' },
    quiet: { type: 'boolean' },
    verbose: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (v.help) {
    await writeOut(help + '\n');
    return 0;
  }
  const file = str(v.config);
  if (!file) throw new UsageError('--config FILE is required', 'train');
  const device = str(v.device);
  if (device !== undefined && device !== 'cpu' && device !== 'cuda') throw new UsageError(`--device: expected cpu or cuda, got "${device}"`, 'train');
  if (v.resume && v['resume-from'] !== undefined) throw new UsageError('give --resume or --resume-from DIR, not both', 'train');
  const steps = int(v.steps, 'steps', 1, 'train');
  const cfg = await loadTrainConfig(file);
  const quiet = v.quiet === true;
  const say = (s: string): void => {
    if (!quiet) process.stderr.write(`lmoe train: ${s}\n`);
  };
  const r = await prepareRun(cfg, { resume: str(v['resume-from']) ?? v.resume === true, device, steps, onStatus: say });
  const t = r.trainer;
  const total = t.options.optim.totalSteps;
  say(`${formatCount(r.trainTokens)} training tokens in ${r.documents.train} documents, ${r.documents.validation} held out; ` +
    `${(countParameters(cfg.model).total / 1e6).toFixed(2)}M parameters on ${t.backend.name}; ` +
    `steps ${t.step + 1}…${total}`);

  const stop = new AbortController();
  const onSigint = (): void => {
    if (stop.signal.aborted) process.exit(130);
    say('stopping after this step (Ctrl-C again to quit at once)');
    stop.abort();
  };
  process.on('SIGINT', onSigint);
  const line = new ProgressLine(total, quiet);
  try {
    t.run(r.loader, r.validation, { onRecord: (rec) => line.update(rec), signal: stop.signal });
  } finally {
    process.off('SIGINT', onSigint);
    line.end();
    t.dispose();
  }
  say(`${stop.signal.aborted ? 'stopped' : 'done'} at step ${t.step}; checkpoint: ${cfg.run.out}/final (log: ${cfg.run.out}/log.jsonl)`);
  return 0;
}

/** One status line on a terminal (rewritten in place), or a line per ~5 % of the run otherwise. */
class ProgressLine {
  private readonly tty = process.stderr.isTTY === true;
  private lastVal: number | undefined;
  private lastPrinted = 0;
  constructor(private readonly total: number, private readonly quiet: boolean) {}

  update(r: StepRecord): void {
    if (this.quiet) return;
    if (r.valLoss !== undefined) this.lastVal = r.valLoss;
    const frac = r.step / this.total;
    const width = 24, filled = Math.round(frac * width);
    const eta = r.step > 0 ? (r.elapsedS / r.step) * (this.total - r.step) : 0;
    const text = `step ${r.step}/${this.total} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] loss ${r.loss.toFixed(3)}` +
      `${this.lastVal !== undefined ? ` val ${this.lastVal.toFixed(3)}` : ''} lr ${r.lr.toExponential(1)} | ${formatCount(Math.round(r.tokensPerSec))} tok/s | ETA ${duration(eta)}`;
    if (this.tty) process.stderr.write(`\r${text}\x1b[K`);
    else if (r.step === 1 || r.step === this.total || r.valLoss !== undefined || r.step - this.lastPrinted >= Math.max(1, Math.round(this.total / 20))) {
      process.stderr.write(text + '\n');
      this.lastPrinted = r.step;
    }
  }

  end(): void {
    if (this.tty && !this.quiet) process.stderr.write('\n');
  }
}

function duration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h > 0 ? `${h}h${String(m % 60).padStart(2, '0')}m` : m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${Math.round(s)}s`;
}
