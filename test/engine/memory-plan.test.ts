/**
 * The memory planner (src/engine/memory-plan.ts): weight bytes equal to what the loader actually allocates for the
 * fixtures (original, packed and bf16 layouts), KV cache and lightning-state bytes worked out by hand and equal to
 * the pools and states the engine allocates, model-workspace bytes equal to the buffers a forward pass allocates;
 * MiniMax-Text-01 at 4M tokens term by term (weights, KV, states, every activation buffer of an 8192-token chunk);
 * the prefill chunk chosen by memory; the refusal line and CapacityError; exact integers at 2^23 tokens and
 * beyond; invalid options; the mirrored CUDA scratch constants; and the cache pool's exact growth, free-before-
 * allocate growth when no block is in use, and kvGrowthFor.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { DType, Tensor } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { parseModelConfig, type ModelConfig } from '../../src/config/config.js';
import { weightBytes } from '../../src/config/size.js';
import {
  CUDA_SCRATCH_CONSTANTS, DEVICE_RESERVE_BYTES, MAX_PREFILL_CHUNK, MIN_PREFILL_CHUNK, planMemory, refuse, type MemoryPlan,
} from '../../src/engine/memory-plan.js';
import { CapacityError, InternalError, InvalidArgumentError } from '../../src/util/errors.js';
import { ATTN_DECODE_SPLITS } from '../../src/backend/cuda/ops/attention.js';
import { MAX_GROUP_BLOCKS, MAX_WORKSPACE_BYTES } from '../../src/backend/cuda/ops/lightning.js';
import { MOE_SMALL_MAX_SLOTS } from '../../src/backend/cuda/ops/moe.js';
import { fixtureNet } from '../helpers/engine.js';
import { FIXTURES } from '../helpers/paths.js';

const BYTES: Record<DType, number> = { f32: 4, bf16: 2, f16: 2, i32: 4 };

interface Event {
  readonly op: 'alloc' | 'upload' | 'free';
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly bytes: number;
  readonly phase: string;
}

/** The CPU backend, recording every allocation (shape × dtype as requested: what a device would allocate) and free. */
class RecordingBackend extends CpuBackend {
  readonly events: Event[] = [];
  phase = '';
  override alloc(shape: readonly number[], dtype: DType): Tensor {
    this.record('alloc', shape, dtype);
    return super.alloc(shape, dtype);
  }
  override upload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor {
    this.record('upload', shape, dtype);
    return super.upload(shape, dtype, data);
  }
  override free(t: Tensor): void {
    this.record('free', t.shape, t.dtype);
    super.free(t);
  }
  bytesIn(phase: string, ops: Event['op'][]): number {
    return this.events.filter((e) => e.phase === phase && ops.includes(e.op)).reduce((a, e) => a + e.bytes, 0);
  }
  private record(op: Event['op'], shape: readonly number[], dtype: DType): void {
    this.events.push({ op, shape: [...shape], dtype, bytes: shape.reduce((a, b) => a * b, 1) * BYTES[dtype], phase: this.phase });
  }
}

function config(rel: string): ModelConfig {
  return parseModelConfig(JSON.parse(fs.readFileSync(path.join(FIXTURES, rel), 'utf8')));
}

const TINY = config('tiny/config.json');
const TEXT01 = config('configs/minimax-text-01.config.json');

test('weights: the plan equals the bytes the loader allocates, per fixture layout and storage dtype', async () => {
  for (const [name, dtype] of [['tiny', 'f32'], ['tiny', 'bf16'], ['tiny-hf', 'f32'], ['tiny-bf16', 'bf16'], ['small-d128', 'bf16']] as const) {
    const b = new RecordingBackend();
    b.phase = 'weights';
    const net = await fixtureNet(name, b, dtype);
    const plan = planMemory({ config: net.config, contextTokens: 1, weightDType: dtype });
    const loaded = b.bytesIn('weights', ['alloc', 'upload']);
    assert.equal(plan.weights.total, loaded, `${name} ${dtype}: planned ${plan.weights.total} vs allocated ${loaded}`);
    // groups: [V, D] tables; fp32 [E, D] routers; 3-D expert tensors
    const c = net.config;
    const sum = (pred: (e: Event) => boolean): number => b.events.filter((e) => e.phase === 'weights' && pred(e)).reduce((a, e) => a + e.bytes, 0);
    assert.equal(plan.weights.embeddings, sum((e) => e.shape.length === 2 && e.shape[0] === c.vocabSize), `${name}: embeddings`);
    assert.equal(plan.weights.routers, sum((e) => e.dtype === 'f32' && e.shape.length === 2 && e.shape[0] === c.numExperts && e.shape[1] === c.hiddenSize), `${name}: routers`);
    assert.equal(plan.weights.experts, sum((e) => e.shape.length === 3), `${name}: experts`);
    assert.equal(plan.weights.norms, sum((e) => e.shape.length === 1 && e.shape[0] === c.hiddenSize), `${name}: norms`);
    // and against the parameter arithmetic of config/size.ts: plus the fp32 slopes [H] of each lightning layer
    const nLin = c.layerTypes.filter((t) => t === 'lightning').length;
    assert.equal(plan.weights.total, weightBytes(c, dtype) + nLin * c.numHeads * 4);
  }
});

test('tiny by hand: weights by group, KV cache, lightning states (bf16 weights and KV, as on CUDA)', () => {
  // V 1024, D 48, L 6 = 4 lightning + 2 softmax, H 4 × 16 (H·Dh 64), Hkv 2 (32), E 8 × I 32
  const p = planMemory({ config: TINY, contextTokens: 300 });
  assert.equal(p.weights.embeddings, 2 * 1024 * 48 * 2);
  assert.equal(p.weights.attention, 4 * ((3 * 64 * 48 + 64 * 48 + 48 * 64 + 64) * 2 + 4 * 4) + 2 * (64 * 48 + 2 * 32 * 48 + 48 * 64) * 2);
  assert.equal(p.weights.experts, 6 * 8 * (2 * 32 * 48 + 48 * 32) * 2);
  assert.equal(p.weights.routers, 6 * 8 * 48 * 4);
  assert.equal(p.weights.norms, (2 * 6 * 48 + 48) * 2);
  assert.equal(p.weights.total, 809_760);
  // 300 tokens: 5 blocks of 64; per block 2 layers × (K, V) × 64 rows × 2 heads × 16 × 2 bytes
  assert.equal(p.kvCache.blocks, 5);
  assert.equal(p.kvCache.bytesPerBlock, 2 * 2 * 64 * 2 * 16 * 2);
  assert.equal(p.kvCache.bytes, 81_920);
  // 4 lightning layers × 4 heads × 16 × 16 × 4 bytes
  assert.equal(p.lightningStates.bytes, 4 * 4 * 16 * 16 * 4);
  assert.equal(p.reserveBytes, DEVICE_RESERVE_BYTES);
  assert.equal(p.totalBytes, p.weights.total + p.kvCache.bytes + p.lightningStates.bytes + p.activations.total + DEVICE_RESERVE_BYTES);
  // 64 tokens fill exactly one block; 65 need two; 3 sequences of 300 need 15
  assert.equal(planMemory({ config: TINY, contextTokens: 64 }).kvCache.blocks, 1);
  assert.equal(planMemory({ config: TINY, contextTokens: 65 }).kvCache.blocks, 2);
  const three = planMemory({ config: TINY, contextTokens: 300, sequences: 3 });
  assert.equal(three.kvCache.bytes, 3 * 81_920);
  assert.equal(three.lightningStates.bytes, 3 * 16_384);
  // resident caches of a running engine add to the lines
  const resident = planMemory({ config: TINY, contextTokens: 300, resident: { kvBlocks: 7, stateSlots: 2 } });
  assert.equal(resident.kvCache.blocks, 12);
  assert.equal(resident.lightningStates.slots, 3);
  // f32 KV (the CPU backend) doubles the KV bytes
  assert.equal(planMemory({ config: TINY, contextTokens: 300, activationDType: 'f32' }).kvCache.bytes, 163_840);
});

test('KV pools, lightning states and the model workspace equal what the engine allocates (CPU, f32)', async () => {
  const b = new RecordingBackend();
  b.phase = 'weights';
  const net = await fixtureNet('tiny', b);
  const c = net.config;
  const T = 300;
  const plan = planMemory({ config: c, contextTokens: T, prefillChunk: T, weightDType: 'f32', activationDType: 'f32' });

  b.phase = 'reserve';
  const state = net.newSequence();
  state.reserve(T, 'exact');
  const pools = b.events.filter((e) => e.phase === 'reserve' && e.op === 'alloc' && e.dtype !== 'i32');
  assert.equal(pools.length, 2 * 2, 'K and V pools of the two softmax layers');
  assert.equal(pools.reduce((a, e) => a + e.bytes, 0), plan.kvCache.bytes);
  const states = c.layerTypes.flatMap((t, l) => (t === 'lightning' ? [state.lightningState(l).length * 4] : []));
  assert.equal(states.reduce((a, x) => a + x, 0), plan.lightningStates.bytesPerSlot);

  b.phase = 'forward';
  const ids = Array.from({ length: T }, (_, i) => (i * 7) % 1000 + 4);
  net.forward([{ state, tokens: ids }], { logits: 'last' });
  // the workspace of a T-token pass; the 'sampled' ids buffer [R] is allocated only when sampling on the device
  assert.equal(b.bytesIn('forward', ['alloc']) + plan.activations.logitRows * 4, plan.activations.workspace);
  b.phase = 'decode';
  net.forward([{ state, tokens: [5] }], { logits: 'last' });
  assert.equal(b.bytesIn('decode', ['alloc']), 0, 'a decode step fits in the prefill-sized workspace');
  state.dispose();
  net.dispose();
});

test('MiniMax-Text-01 at 4M tokens: every term by hand', () => {
  const N = 4 * 2 ** 20;
  const p = planMemory({ config: TEXT01, contextTokens: N });
  // 912,210,767,872 bytes of bf16 weights with fp32 routers (MODEL.md §14), plus 70 × 64 fp32 slopes
  assert.equal(p.weights.total, 912_210_767_872 + 70 * 64 * 4);
  assert.equal(p.weights.embeddings, 2 * 200_064 * 6144 * 2);
  assert.equal(p.weights.experts, 80 * 32 * 3 * 6144 * 9216 * 2);
  assert.equal(p.weights.routers, 80 * 32 * 6144 * 4);
  // KV: 10 softmax layers × (K, V) × 8 kv heads × 128 × 2 bytes = 40,960 bytes per token; 4M is 65,536 blocks
  assert.equal(p.kvCache.blocks, 65_536);
  assert.equal(p.kvCache.bytes, 40_960 * N);
  assert.equal(p.kvCache.bytes, 171_798_691_840); // 160 GiB
  // lightning: 70 × 64 × 128² × 4
  assert.equal(p.lightningStates.bytes, 293_601_280);

  // activations of one 8192-token chunk (no device size: the default), bf16, one sequence
  assert.equal(p.prefillChunk, MAX_PREFILL_CHUNK);
  assert.equal(p.prefillChunkSource, 'default');
  const a = p.activations;
  const T = 8192, D = 6144, Hd = 64 * 128, KVd = 8 * 128, E = 32, K = 2, I = 9216, V = 200_064;
  assert.equal(a.tokens, T);
  assert.equal(a.residual, 3 * T * D * 4); // x, a, m fp32
  assert.equal(a.norms, T * D * 2 + T * D * 4 + D * 4 + D * 2); // h bf16, h_router fp32, last row fp32 + normed
  assert.equal(a.attention, T * 2 * (Hd /* o */ + 3 * Hd /* qkv */ + Hd /* g */ + Hd /* q */ + 2 * KVd /* k, v */));
  assert.equal(a.router, T * E * 4 + 2 * T * K * 4);
  assert.equal(a.logits, V * 4 + 4);
  assert.equal(a.lightningWorkspace, (T / 256) * 64 * 128 * 128 * 4); // 32 blocks × 4 MiB, under the 1 GiB cap
  // T·K slots × (xp D + h 2I + act I + y D) bf16, plus counts/cursor [E], slot tables [T·K] and the decode order
  assert.equal(a.moe, T * K * (D + 2 * I + I + D) * 2 + 2 * E * 4 + 2 * T * K * 4 + (E + 1 + K) * 4);
  assert.equal(a.attentionDecode, 64 * 32 * 128 * 4 + 64 * 32 * 2 * 4);
  assert.equal(a.total, a.residual + a.norms + a.attention + a.router + a.logits + a.lightningWorkspace + a.moe + a.attentionDecode);
  assert.equal(p.totalBytes, p.weights.total + p.kvCache.bytes + p.lightningStates.bytes + a.total + DEVICE_RESERVE_BYTES);
  assert.ok(p.totalBytes > 1000 * 2 ** 30 && p.totalBytes < 1100 * 2 ** 30, 'about a TiB: weights 850 GiB + KV 160 GiB');
  assert.equal(p.fits, undefined);
  assert.equal(p.reason, undefined);

  // the lightning workspace stops at 1 GiB: 256 blocks of 4 MiB (a 64K-token pass)
  assert.equal(planMemory({ config: TEXT01, contextTokens: N, prefillChunk: 2 ** 20 }).activations.lightningWorkspace, 2 ** 30);
});

test('the prefill chunk is the largest power of two that fits, never below the minimum; a given one is kept', () => {
  const N = 1_000_000;
  const at = (chunk: number): MemoryPlan => planMemory({ config: TINY, contextTokens: N, prefillChunk: chunk });
  // activations grow with the chunk, so each budget picks one chunk
  for (const want of [8192, 4096, 1024, 256]) {
    const p = planMemory({ config: TINY, contextTokens: N, deviceBytes: at(want).totalBytes });
    assert.equal(p.prefillChunk, want);
    assert.equal(p.prefillChunkSource, 'fit');
    assert.equal(p.fits, true);
    if (want < MAX_PREFILL_CHUNK) {
      assert.equal(planMemory({ config: TINY, contextTokens: N, deviceBytes: at(2 * want).totalBytes - 1 }).prefillChunk, want);
    }
  }
  const none = planMemory({ config: TINY, contextTokens: N, deviceBytes: at(MIN_PREFILL_CHUNK).totalBytes - 1 });
  assert.equal(none.prefillChunk, MIN_PREFILL_CHUNK);
  assert.equal(none.fits, false);
  const given = planMemory({ config: TINY, contextTokens: N, prefillChunk: 100, deviceBytes: 1 });
  assert.equal(given.prefillChunk, 100);
  assert.equal(given.prefillChunkSource, 'given');
  // a context shorter than the chunk: activations for the context only
  assert.equal(planMemory({ config: TINY, contextTokens: 300 }).activations.tokens, 300);
  assert.equal(planMemory({ config: TINY, contextTokens: 300, sequences: 4 }).activations.tokens, 1200);
});

test('refusal: one line naming the context, the total, every part and the device size; refuse() throws CapacityError', () => {
  const p = planMemory({ config: TEXT01, contextTokens: 4 * 2 ** 20, deviceBytes: 139.7 * 2 ** 30 });
  assert.equal(p.fits, false);
  const line = p.reason!;
  assert.ok(!line.includes('\n'));
  assert.match(line, /^a 4,194,304-token context needs 1011\.4 GiB \(weights 849\.6 GiB, KV cache 160\.0 GiB, lightning states 280\.0 MiB, activations [\d.]+ MiB for 256-token prefill chunks, reserve 1\.5 GiB\) but only 139\.7 GiB of device memory is available$/);
  assert.throws(() => refuse(p), (e: unknown) => e instanceof CapacityError && e.code === 'OUT_OF_MEMORY' && e.message === line && e.hint !== undefined);
  const many = planMemory({ config: TINY, contextTokens: 2 ** 20, sequences: 3, deviceBytes: 2 ** 30 });
  assert.match(many.reason!, /^3 sequences of 1,048,576 tokens need /);
  // a plan that fits has no reason, and refusing it is a bug
  const ok = planMemory({ config: TINY, contextTokens: 300, deviceBytes: 2 * 2 ** 30 });
  assert.equal(ok.fits, true);
  assert.equal(ok.reason, undefined);
  assert.throws(() => refuse(ok), InternalError);
});

test('arithmetic is exact for 2^23 tokens and far beyond, and refuses what it cannot count exactly', () => {
  for (const N of [2 ** 23, 2 ** 23 + 1, 2 ** 31 + 63, 2 ** 33 + 5]) {
    const p = planMemory({ config: TEXT01, contextTokens: N, sequences: 3 });
    const blocks = 3n * ((BigInt(N) + 63n) / 64n);
    assert.equal(BigInt(p.kvCache.blocks), blocks, `blocks at ${N}`);
    assert.equal(BigInt(p.kvCache.bytes), blocks * 64n * 40_960n, `KV bytes at ${N}`);
    const total = BigInt(p.weights.total) + BigInt(p.kvCache.bytes) + BigInt(p.lightningStates.bytes) + BigInt(p.activations.total) + BigInt(DEVICE_RESERVE_BYTES);
    assert.equal(BigInt(p.totalBytes), total, `total at ${N}`);
    assert.ok(Number.isSafeInteger(p.totalBytes));
  }
  // 2^40 tokens × 40,960 bytes is past 2^53
  assert.throws(() => planMemory({ config: TEXT01, contextTokens: 2 ** 40 }), InvalidArgumentError);
});

test('invalid options are InvalidArgumentErrors naming the option', () => {
  const bad: [Partial<Parameters<typeof planMemory>[0]>, string][] = [
    [{ contextTokens: 0 }, 'contextTokens'],
    [{ contextTokens: 1.5 }, 'contextTokens'],
    [{ contextTokens: Number.NaN }, 'contextTokens'],
    [{ sequences: 0 }, 'sequences'],
    [{ prefillChunk: 0 }, 'prefillChunk'],
    [{ deviceBytes: -1 }, 'deviceBytes'],
    [{ deviceBytes: Number.POSITIVE_INFINITY }, 'deviceBytes'],
    [{ weightDType: 'int8' as 'bf16' }, 'weightDType'],
    [{ resident: { kvBlocks: -1 } }, 'resident.kvBlocks'],
  ];
  for (const [patch, param] of bad) {
    assert.throws(() => planMemory({ config: TINY, contextTokens: 100, ...patch }), (e: unknown) => e instanceof InvalidArgumentError && e.param === param, param);
  }
});

test('the CUDA scratch constants the planner mirrors agree with the backend', () => {
  assert.deepEqual(CUDA_SCRATCH_CONSTANTS, {
    LIGHTNING_WORKSPACE_CAP_BYTES: MAX_WORKSPACE_BYTES,
    LIGHTNING_MAX_GROUP_BLOCKS: MAX_GROUP_BLOCKS,
    MOE_SMALL_MAX_SLOTS,
    ATTN_DECODE_SPLITS,
  });
});

test('cache pool: exact growth, free-before-allocate when no block is in use, copy (and kvGrowthFor) when some are', async () => {
  const b = new RecordingBackend();
  const net = await fixtureNet('tiny', b);
  const pool = net.cache;
  const poolAllocs = (phase: string) => b.events.filter((e) => e.phase === phase && e.op === 'alloc' && e.dtype !== 'i32');

  b.phase = 'first';
  const s1 = net.newSequence();
  assert.deepEqual(pool.kvGrowthFor(5), { blocksAfter: 5, heldWhileGrowing: 0 });
  s1.reserve(300, 'exact');
  assert.equal(pool.kvBlocksAllocated, 5, 'exact growth: 5 blocks, not the doubling minimum of 16');
  assert.ok(poolAllocs('first').every((e) => e.shape[0] === 5 * 64));
  s1.dispose();

  // no block in use: the old pools are freed before the new ones are allocated
  b.phase = 'regrow';
  const s2 = net.newSequence();
  s2.reserve(1000, 'exact');
  assert.equal(pool.kvBlocksAllocated, 16);
  const ev = b.events.filter((e) => e.phase === 'regrow' && e.dtype !== 'i32');
  assert.deepEqual(ev.map((e) => e.op), ['free', 'free', 'alloc', 'alloc', 'free', 'free', 'alloc', 'alloc']);

  // blocks in use: the new pools are allocated while the old ones are held (their rows are copied)
  const s3 = net.newSequence();
  assert.deepEqual(pool.kvGrowthFor(20), { blocksAfter: 36, heldWhileGrowing: 16 });
  assert.deepEqual(pool.kvGrowthFor(0), { blocksAfter: 16, heldWhileGrowing: 0 });
  b.phase = 'copy';
  s3.reserve(20 * 64, 'exact');
  assert.equal(pool.kvBlocksAllocated, 36);
  assert.deepEqual(b.events.filter((e) => e.phase === 'copy' && e.dtype !== 'i32').map((e) => e.op), ['alloc', 'alloc', 'free', 'free', 'alloc', 'alloc', 'free', 'free']);
  // the doubling path is unchanged: one more block doubles the pool
  s3.reserve(21 * 64);
  assert.equal(pool.kvBlocksAllocated, 72);
  s2.dispose();
  s3.dispose();
  assert.equal(pool.slotsAllocated, 2, 'slots are kept for reuse');
  net.dispose();
});
