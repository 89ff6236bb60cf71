#!/usr/bin/env node
/**
 * `lmoe`: the lightning-moe command line. Errors print as one line on stderr with a non-zero exit status
 * (2 for usage errors, 1 otherwise); --verbose adds the stack.
 */

import { LightningMoeError } from '../util/errors.js';
import { UsageError } from './args.js';
import * as generate from './commands/generate.js';
import * as chat from './commands/chat.js';
import * as inspect from './commands/inspect.js';
import * as logits from './commands/logits.js';
import * as serve from './commands/serve.js';
import * as train from './commands/train.js';

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<number>; help: string }> = { generate, chat, inspect, logits, serve, train };

const HELP = `lmoe — run MiniMax-01 (MiniMax-Text-01, MiniMax-M1) checkpoints from Node.

Usage: lmoe <command> [options]

Commands:
  generate   stream a completion of a prompt (or print {"ids", "text"} with --json)
  chat       interactive chat through the checkpoint's chat template
  inspect    architecture, parameter count and memory estimate of a checkpoint or config.json
  logits     print {"logits": number[][]} for a list of token ids
  serve      OpenAI-compatible HTTP server with continuous batching
  train      train a model of this architecture from a config file (CPU or GPU)

Run "lmoe <command> --help" for a command's options.`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(HELP + '\n');
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === '--version' || cmd === '-v') {
    const { createRequire } = await import('node:module');
    const pkg = createRequire(import.meta.url)('../../../package.json') as { version: string };
    process.stdout.write(pkg.version + '\n');
    return 0;
  }
  const command = COMMANDS[cmd];
  if (!command) throw new UsageError(`unknown command "${cmd}" (expected one of ${Object.keys(COMMANDS).join(', ')})`);
  return command.run(rest);
}

// A closed pipe (`lmoe logits ... | head`) is not an error worth a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

const verbose = process.argv.includes('--verbose');
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const oneLine = (s: string): string => s.replace(/\s*\n\s*/g, ' ');
    if (err instanceof LightningMoeError) {
      process.stderr.write(`lmoe: error: ${oneLine(err.message)}${err.hint ? ` (${err.hint})` : ''}\n`);
    } else {
      process.stderr.write(`lmoe: internal error: ${oneLine(err instanceof Error ? err.message : String(err))} (rerun with --verbose for details)\n`);
    }
    if (verbose && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
