/**
 * `lmoe logits`: print `{"logits": number[][]}` — one row of V logits per input position, from an empty cache.
 * A contract used by external checks; keep the output shape exactly so.
 */

import { idList, parse, str, UsageError } from '../args.js';
import { device, loadWithProgress, MODEL_HELP, MODEL_OPTIONS, requireModel, writeOut } from '../common.js';

export const help = `Usage: lmoe logits --model DIR (--ids 1,2,3 | --prompt TEXT) [--last]

Prints {"logits": number[][]}: the fp32 logits at every position of the input (one row per token).

Options:
${MODEL_HELP}
      --ids LIST         comma-separated token ids
  -p, --prompt TEXT      text to tokenize instead of --ids
      --last             only the last position's row

Example:
  lmoe logits --model ./tiny --ids 1,2,3`;

export async function run(argv: string[]): Promise<number> {
  const v = parse('logits', argv, { ...MODEL_OPTIONS, ids: { type: 'string' }, prompt: { type: 'string', short: 'p' }, last: { type: 'boolean' } });
  if (v.help) {
    await writeOut(help + '\n');
    return 0;
  }
  const dir = requireModel(v, 'logits');
  const ids = idList(v.ids, 'ids', 'logits');
  const prompt = str(v.prompt);
  if ((ids === undefined) === (prompt === undefined)) throw new UsageError('give exactly one of --ids LIST or --prompt TEXT', 'logits');
  const model = await loadWithProgress(dir, device(v, 'logits'));
  try {
    const input = ids ?? model.encode(prompt!);
    if (input.length === 0) throw new UsageError('the input has no tokens', 'logits');
    let rows = model.logits(input);
    if (v.last) rows = rows.slice(-1);
    // Stream row by row: a long prompt over a 200K vocabulary is hundreds of MB of JSON.
    await writeOut('{"logits": [');
    for (let r = 0; r < rows.length; r++) {
      await writeOut((r > 0 ? ',' : '') + '[' + jsonRow(rows[r]) + ']');
    }
    await writeOut(']}\n');
    return 0;
  } finally {
    model.dispose();
  }
}

/** Comma-joined values; a non-finite logit (never expected) becomes null so the output stays valid JSON. */
function jsonRow(row: Float32Array): string {
  return row.every(Number.isFinite) ? Array.prototype.join.call(row, ',') : Array.from(row, (x) => (Number.isFinite(x) ? String(x) : 'null')).join(',');
}
