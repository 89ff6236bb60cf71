/**
 * Pieces shared by the CLI commands: the --model/--device options, sampling and prefill flags, loading a model with
 * a progress bar on stderr, and prefill progress on stderr (both only when stderr is a terminal or when asked for,
 * so pipes and --json output stay clean; stdout never carries progress).
 */

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type Device, type Model } from '../engine/model.js';
import type { GenerateOptions, PrefillProgress } from '../engine/generate.js';
import { formatCount } from '../util/units.js';
import { int, idList, list, num, str, UsageError, type OptionSpec } from './args.js';

export const MODEL_OPTIONS: OptionSpec = {
  model: { type: 'string', short: 'm' },
  device: { type: 'string' },
  verbose: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

export const SAMPLING_OPTIONS: OptionSpec = {
  'max-tokens': { type: 'string', short: 'n' },
  temperature: { type: 'string', short: 't' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  'stop-token-id': { type: 'string', multiple: true },
  'ignore-eos': { type: 'boolean' },
};

export const MODEL_HELP = `  -m, --model DIR        checkpoint directory (config.json, *.safetensors, tokenizer.json); default: the
                         embedded minimax-tiny model shipped with lightning-moe
      --device NAME      cuda | cpu | auto (default auto: CUDA when a GPU is usable, else CPU)
      --verbose          print stack traces on errors
  -h, --help             show this help`;

export const SAMPLING_HELP = `  -n, --max-tokens N     most tokens to generate (default 256, or generation_config.json)
  -t, --temperature T    0 = greedy; default 1 (greedy when generation_config.json says do_sample: false)
      --top-k K          sample from the K most likely tokens (0 = off)
      --top-p P          nucleus sampling threshold in (0, 1] (1 = off)
      --seed S           integer seed; the same seed gives the same output
      --stop STR         stop before this literal string (repeatable)
      --stop-token-id ID stop at this token id (repeatable)
      --ignore-eos       keep generating through end-of-sequence tokens`;

export const PREFILL_OPTIONS: OptionSpec = {
  'prefill-chunk': { type: 'string' },
  progress: { type: 'boolean' },
};

export const PREFILL_HELP = `      --prefill-chunk N  prompt tokens per forward pass (default: from the memory plan, at most 8192)
      --progress         report prefill progress on stderr for every prompt (default: on a terminal, for
                         prompts of ${formatCount(8192)} tokens or more)`;

type Values = Record<string, string | boolean | string[] | undefined>;

/**
 * The small model trained by this project and shipped in the package (models/minimax-tiny, see its README):
 * what generate / chat / serve / logits run when no --model is given, so a fresh clone shows real text.
 */
export const EMBEDDED_MODEL_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../models/minimax-tiny');

export function requireModel(v: Values, command: string): string {
  const dir = str(v.model);
  if (dir) return dir;
  if (fs.existsSync(path.join(EMBEDDED_MODEL_DIR, 'config.json'))) return EMBEDDED_MODEL_DIR;
  throw new UsageError('--model DIR is required (this installation has no embedded default model)', command);
}

export function device(v: Values, command: string): Device {
  const d = str(v.device) ?? 'auto';
  if (d !== 'cpu' && d !== 'cuda' && d !== 'auto') throw new UsageError(`--device: expected cuda, cpu or auto, got "${d}"`, command);
  return d;
}

export function samplingOptions(v: Values, command: string): GenerateOptions {
  const stopIds = list(v['stop-token-id']).flatMap((s) => idList(s, 'stop-token-id', command) ?? []);
  return {
    maxTokens: int(v['max-tokens'], 'max-tokens', 1, command),
    temperature: num(v.temperature, 'temperature', command, (x) => x >= 0 && x <= 100, '[0, 100]'),
    topK: int(v['top-k'], 'top-k', 0, command),
    topP: num(v['top-p'], 'top-p', command, (x) => x > 0 && x <= 1, '(0, 1]'),
    seed: int(v.seed, 'seed', 0, command),
    stop: list(v.stop).length > 0 ? list(v.stop) : undefined,
    stopTokenIds: stopIds.length > 0 ? stopIds : undefined,
    ignoreEos: v['ignore-eos'] === true,
  };
}

/** The --prefill-chunk option as GenerateOptions. */
export function prefillOptions(v: Values, command: string): Pick<GenerateOptions, 'prefillChunkSize'> {
  return { prefillChunkSize: int(v['prefill-chunk'], 'prefill-chunk', 1, command) };
}

/** Prompts at least this long get a progress line on a terminal without --progress; shorter ones finish quickly. */
export const PROGRESS_MIN_TOKENS = 8192;
/** Least time between two progress lines (the last one is always printed). */
const PROGRESS_INTERVAL_MS = 500;

/**
 * Prefill progress on stderr, fed by GenerateOptions.onPrefillProgress: on a terminal one line updated in place
 * (prompts of PROGRESS_MIN_TOKENS or more, or any with --progress); elsewhere plain lines, only with --progress.
 * At most one line per 0.5 s, plus the final one.
 */
export class PrefillProgressLine {
  private lastMs = Number.NEGATIVE_INFINITY;
  private open = false;

  constructor(
    /** --progress was given. */
    private readonly forced: boolean,
    private readonly tty = process.stderr.isTTY === true,
    private readonly write: (text: string) => void = (text) => void process.stderr.write(text),
  ) {}

  /** The onPrefillProgress callback. */
  readonly update = (p: PrefillProgress): void => {
    if (!this.forced && !(this.tty && p.total >= PROGRESS_MIN_TOKENS)) return;
    const now = performance.now();
    const last = p.done >= p.total;
    if (!last && now - this.lastMs < PROGRESS_INTERVAL_MS) return;
    this.lastMs = now;
    const line = formatPrefillProgress(p);
    if (this.tty) {
      this.write(`\r\x1b[K${line}${last ? '\n' : ''}`);
      this.open = !last;
    } else {
      this.write(line + '\n');
    }
  };

  /** Ends a terminal line left open by a prefill cut short (an abort or an error). */
  end(): void {
    if (!this.open) return;
    this.open = false;
    this.write('\n');
  }
}

/** "prefill 65,536/4,194,304 tokens (1.6%), 51,234 tokens/s, ETA 1m 20s" (at the end: "…, 4.2 s"). */
export function formatPrefillProgress(p: PrefillProgress): string {
  const pct = p.total > 0 ? (100 * p.done) / p.total : 100;
  const rate = `${formatCount(Math.round(p.tokensPerSecond))} tokens/s`;
  const when = p.done >= p.total ? `done in ${duration(p.done / p.tokensPerSecond)}` : `ETA ${duration(p.etaSeconds)}`;
  return `prefill ${formatCount(p.done)}/${formatCount(p.total)} tokens (${pct.toFixed(1)}%), ${rate}, ${when}`;
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** Loads the model, drawing a progress bar on stderr when it is a terminal. */
export async function loadWithProgress(dir: string, dev: Device, signal?: AbortSignal): Promise<Model> {
  const tty = process.stderr.isTTY === true;
  let last = 0;
  const model = await loadModel(dir, {
    device: dev,
    signal,
    onProgress: (e) => {
      if (e.status === 'device') {
        if (e.fallbackReason && (tty || process.env.LMOE_VERBOSE)) process.stderr.write(`lmoe: using the CPU (${e.fallbackReason})\n`);
        return;
      }
      if (!tty) return;
      if (e.status === 'compile') {
        if (!e.cached) process.stderr.write(`\r\x1b[Kcompiled ${e.file} in ${e.seconds.toFixed(1)} s\n`);
        return;
      }
      if (e.status === 'weights') {
        const now = performance.now();
        if (now - last < 100 && e.loadedBytes < e.totalBytes) return;
        last = now;
        const frac = e.totalBytes > 0 ? e.loadedBytes / e.totalBytes : 1;
        const width = 30, filled = Math.round(frac * width);
        process.stderr.write(
          `\r\x1b[Kloading weights [${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}%  ${mb(e.loadedBytes)}/${mb(e.totalBytes)} MB`,
        );
      } else {
        process.stderr.write(`\r\x1b[Kloaded ${mb(e.totalBytes)} MB in ${e.seconds.toFixed(1)} s (${(e.totalBytes / 1e9 / Math.max(e.seconds, 1e-9)).toFixed(2)} GB/s)\n`);
      }
    },
  });
  return model;
}

function mb(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

/** Writes to stdout and waits for the stream to drain (large JSON payloads, pipes). */
export function writeOut(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(text, (err) => (err ? reject(err) : resolve()));
  });
}
