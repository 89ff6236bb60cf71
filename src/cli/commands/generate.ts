/**
 * `lmoe generate`: stream a completion to stdout, or print `{"ids": number[], "text": string}` with --json
 * (generated ids only; a contract used by external checks, keep it exactly so). Prefill progress of long prompts
 * goes to stderr. Ctrl-C aborts between prefill chunks or decode steps and exits with status 130.
 */

import { AbortError } from '../../util/errors.js';
import { idList, parse, str, UsageError } from '../args.js';
import {
  device, loadWithProgress, MODEL_HELP, MODEL_OPTIONS, PREFILL_HELP, PREFILL_OPTIONS, PrefillProgressLine, prefillOptions, requireModel, SAMPLING_HELP,
  SAMPLING_OPTIONS, samplingOptions, writeOut,
} from '../common.js';

export const help = `Usage: lmoe generate --model DIR (--prompt TEXT | --ids 1,2,3) [options]

Generates a continuation of a prompt and streams the text to stdout.

Options:
${MODEL_HELP}
  -p, --prompt TEXT      prompt text (special-token strings become control tokens)
      --ids LIST         prompt as comma-separated token ids instead of text
      --json             print {"ids": [...], "text": "..."} (generated tokens only) at the end instead of streaming
${SAMPLING_HELP}
${PREFILL_HELP}

Ctrl-C stops generation (between prefill chunks or decode steps) with exit status 130.

Examples:
  lmoe generate --model ./MiniMax-Text-01 --prompt "The capital of France is" --max-tokens 16
  lmoe generate --model ./tiny --ids 1,2,3 --max-tokens 8 --temperature 0 --ignore-eos --json`;

export async function run(argv: string[]): Promise<number> {
  const v = parse('generate', argv, {
    ...MODEL_OPTIONS,
    ...SAMPLING_OPTIONS,
    ...PREFILL_OPTIONS,
    prompt: { type: 'string', short: 'p' },
    ids: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (v.help) {
    await writeOut(help + '\n');
    return 0;
  }
  const dir = requireModel(v, 'generate');
  const ids = idList(v.ids, 'ids', 'generate');
  const prompt = str(v.prompt);
  if ((ids === undefined) === (prompt === undefined)) throw new UsageError('give exactly one of --prompt TEXT or --ids LIST', 'generate');
  const progress = new PrefillProgressLine(v.progress === true);
  const options = { ...samplingOptions(v, 'generate'), ...prefillOptions(v, 'generate'), onPrefillProgress: progress.update };
  const abort = new AbortController();
  const onSigint = (): void => abort.abort();
  process.once('SIGINT', onSigint);
  try {
    const model = await loadWithProgress(dir, device(v, 'generate'), abort.signal);
    try {
      const input = ids ?? prompt!;
      if (v.json) {
        const r = await model.generate(input, { ...options, signal: abort.signal });
        await writeOut(JSON.stringify({ ids: r.ids, text: r.text }) + '\n');
        return 0;
      }
      for await (const ev of model.stream(input, { ...options, signal: abort.signal })) {
        if (ev.text) process.stdout.write(ev.text);
        if (ev.type === 'done') await writeOut('\n');
      }
      return 0;
    } finally {
      model.dispose();
    }
  } catch (e) {
    progress.end();
    if (e instanceof AbortError) {
      process.stdout.write('\n');
      return 130;
    }
    throw e;
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}
