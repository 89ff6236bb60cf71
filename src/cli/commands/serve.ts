/**
 * `lmoe serve`: the OpenAI-compatible HTTP server (src/server). Binds 127.0.0.1 unless told otherwise; SIGTERM or
 * SIGINT drains (new requests get 503, running ones may finish within --shutdown-timeout) and exits 0.
 */

import fs from 'node:fs/promises';
import { startServer } from '../../server/server.js';
import { redactArgs } from '../../server/auth.js';
import { int, list, parse, str, UsageError } from '../args.js';
import { device, MODEL_HELP, MODEL_OPTIONS, requireModel, writeOut } from '../common.js';

export const help = `Usage: lmoe serve --model DIR [options]

Serves the model over an OpenAI-compatible HTTP API: POST /v1/chat/completions, POST /v1/completions,
GET /v1/models (these three need the API key when one is set), GET /health, GET /metrics (Prometheus).

Options:
${MODEL_HELP}
      --host ADDR              interface to listen on (default 127.0.0.1; 0.0.0.0 exposes the server)
      --port N                 port (default 8000; 0 picks a free one)
      --api-key KEY            require "Authorization: Bearer KEY" (repeatable)
      --api-key-file FILE      read keys from FILE, one per line
      --served-model-name NAME model id for clients (default: the directory's name)
      --max-model-len N        context length served (default: the model's max_position_embeddings)
      --max-num-seqs N         sequences batched together = lightning state slots (default 32)
      --kv-cache-tokens N      KV cache capacity, allocated at start (default 2 × max-model-len, at most 1,048,576)
      --max-batch-tokens N     tokens per engine step; longer prompts are prefilled in chunks (default 512)
      --max-waiting N          sequences that may wait for a slot before 429 (default 256)
      --max-n N                largest n per request (default 16)
      --max-tokens-cap N       largest max_tokens, and the chat default (default 16384)
      --max-body-bytes N       request body limit (default 4194304)
      --shutdown-timeout S     seconds to let running requests finish after SIGTERM (default 30; 0 = abort now)
      --cors-origin ORIGIN     allow this browser origin (repeatable; CORS is off by default)
      --metrics-auth           require the API key for /metrics too
      --log-requests           one line per request on stderr (ids, status, timing; never prompt text)

Examples:
  lmoe serve --model ./MiniMax-Text-01 --port 8000
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "MiniMax-Text-01", "messages": [{"role": "user", "content": "Hi"}]}'`;

export async function run(argv: string[]): Promise<number> {
  const v = parse('serve', argv, {
    ...MODEL_OPTIONS,
    host: { type: 'string' },
    port: { type: 'string' },
    'api-key': { type: 'string', multiple: true },
    'api-key-file': { type: 'string' },
    'served-model-name': { type: 'string' },
    'max-model-len': { type: 'string' },
    'max-num-seqs': { type: 'string' },
    'kv-cache-tokens': { type: 'string' },
    'max-batch-tokens': { type: 'string' },
    'max-waiting': { type: 'string' },
    'max-n': { type: 'string' },
    'max-tokens-cap': { type: 'string' },
    'max-body-bytes': { type: 'string' },
    'shutdown-timeout': { type: 'string' },
    'cors-origin': { type: 'string', multiple: true },
    'metrics-auth': { type: 'boolean' },
    'log-requests': { type: 'boolean' },
  });
  if (v.help) {
    await writeOut(help + '\n');
    return 0;
  }
  const dir = requireModel(v, 'serve');
  const keys = list(v['api-key']);
  const keyFile = str(v['api-key-file']);
  if (keyFile) {
    const text = await fs.readFile(keyFile, 'utf8').catch(() => {
      throw new UsageError(`--api-key-file: cannot read ${keyFile}`, 'serve');
    });
    keys.push(...text.split('\n').map((s) => s.trim()).filter((s) => s.length > 0));
  }
  if (keys.some((k) => k.length === 0)) throw new UsageError('--api-key must not be empty', 'serve');
  const maxN = int(v['max-n'], '--max-n', 1, 'serve');
  if (maxN !== undefined && maxN > 128) throw new UsageError('--max-n must be at most 128', 'serve');
  const timeoutS = int(v['shutdown-timeout'], '--shutdown-timeout', 0, 'serve') ?? 30;
  const logLine = (line: string): void => void process.stderr.write(`lmoe serve: ${line}\n`);

  const server = await startServer({
    model: dir,
    device: device(v, 'serve'),
    host: str(v.host),
    port: int(v.port, '--port', 0, 'serve'),
    apiKeys: keys,
    servedModelName: str(v['served-model-name']),
    maxModelLen: int(v['max-model-len'], '--max-model-len', 2, 'serve'),
    maxNumSeqs: int(v['max-num-seqs'], '--max-num-seqs', 1, 'serve'),
    kvCacheTokens: int(v['kv-cache-tokens'], '--kv-cache-tokens', 1, 'serve'),
    maxBatchTokens: int(v['max-batch-tokens'], '--max-batch-tokens', 1, 'serve'),
    maxWaiting: int(v['max-waiting'], '--max-waiting', 0, 'serve'),
    maxBodyBytes: int(v['max-body-bytes'], '--max-body-bytes', 1024, 'serve'),
    limits: {
      ...(maxN !== undefined ? { maxN } : {}),
      ...(v['max-tokens-cap'] !== undefined ? { maxTokensCap: int(v['max-tokens-cap'], '--max-tokens-cap', 1, 'serve')! } : {}),
    },
    corsOrigins: list(v['cors-origin']),
    metricsAuth: v['metrics-auth'] === true,
    log: v['log-requests'] ? logLine : undefined,
  });
  logLine(`listening on ${server.url} as "${server.modelName}" (args: ${redactArgs(argv).join(' ')}); loading the model`);

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logLine(`${signal}: draining (up to ${timeoutS} s)`);
    void server.drain(timeoutS * 1000).then(() => {
      logLine('stopped');
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  try {
    await server.ready;
  } catch (err) {
    await server.drain(0).catch(() => {});
    throw err;
  }
  logLine(`ready on ${server.url}`);
  // Serve until a signal drains the server and exits.
  await new Promise<never>(() => {});
  return 0;
}
