/**
 * `lmoe chat`: an interactive conversation rendered through the checkpoint's chat template, keeping the history.
 * Reads one user turn per line (from a terminal or a pipe); /reset clears the history, /exit leaves. Ctrl-C during
 * a reply stops that reply; Ctrl-C at the prompt exits.
 */

import readline from 'node:readline';
import type { ChatMessage } from '../../tokenizer/index.js';
import { AbortError } from '../../util/errors.js';
import { parse, str } from '../args.js';
import {
  device, loadWithProgress, MODEL_HELP, MODEL_OPTIONS, PREFILL_HELP, PREFILL_OPTIONS, PrefillProgressLine, prefillOptions, requireModel, SAMPLING_HELP,
  SAMPLING_OPTIONS, samplingOptions, writeOut,
} from '../common.js';

export const help = `Usage: lmoe chat --model DIR [--system TEXT] [options]

Chats with the model using its chat template. Type a message and press Enter.
Commands: /reset (forget the conversation), /exit (quit). Ctrl-C stops a reply; at the prompt it quits.

Options:
${MODEL_HELP}
  -s, --system TEXT      system prompt
${SAMPLING_HELP}
${PREFILL_HELP}

Example:
  lmoe chat --model ./MiniMax-M1-40k --system "You are terse." --temperature 0.7`;

export async function run(argv: string[]): Promise<number> {
  const v = parse('chat', argv, { ...MODEL_OPTIONS, ...SAMPLING_OPTIONS, ...PREFILL_OPTIONS, system: { type: 'string', short: 's' } });
  if (v.help) {
    await writeOut(help + '\n');
    return 0;
  }
  const dir = requireModel(v, 'chat');
  const options = { ...samplingOptions(v, 'chat'), ...prefillOptions(v, 'chat') };
  const model = await loadWithProgress(dir, device(v, 'chat'));
  const system = str(v.system);
  const history: ChatMessage[] = system ? [{ role: 'system', content: system }] : [];
  const interactive = process.stdin.isTTY === true;
  const rl = readline.createInterface({ input: process.stdin, output: interactive ? process.stdout : undefined, terminal: interactive });
  let replying: AbortController | undefined;
  rl.on('SIGINT', () => {
    if (replying) replying.abort();
    else rl.close();
  });
  if (interactive) process.stdout.write(`chatting with ${dir} (/reset, /exit)\n`);
  try {
    const lines = rl[Symbol.asyncIterator]();
    for (;;) {
      if (interactive) process.stdout.write('> ');
      // Over a pipe, stdin may close while a reply is generating; the iterator still yields the buffered lines.
      const next = await lines.next();
      if (next.done) break;
      const line = next.value.trim();
      if (line === '') continue;
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        history.splice(system ? 1 : 0);
        if (interactive) process.stdout.write('(history cleared)\n');
        continue;
      }
      history.push({ role: 'user', content: line });
      replying = new AbortController();
      const progress = new PrefillProgressLine(v.progress === true);
      let reply = '';
      try {
        for await (const ev of model.chatStream(history, { ...options, signal: replying.signal, onPrefillProgress: progress.update })) {
          if (ev.text) {
            reply += ev.text;
            process.stdout.write(ev.text);
          }
        }
      } catch (e) {
        progress.end();
        if (!(e instanceof AbortError)) throw e;
        process.stdout.write(' [stopped]');
      } finally {
        replying = undefined;
      }
      process.stdout.write('\n');
      history.push({ role: 'assistant', content: reply });
    }
  } finally {
    rl.close();
    model.dispose();
  }
  return 0;
}
