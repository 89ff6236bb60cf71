#!/usr/bin/env node
// Draws docs/scaling.svg from bench/results/h200-scaling.json (written by `node dist/bench/long-context.js slice`
// on the GPU): left, prefill time per layer kind against prompt length (log–log, with slope-1 and slope-2 guides:
// lightning layers and the MoE grow linearly, the softmax layer quadratically); right, batch-1 decode latency against
// context length. Plain SVG, no dependencies; every plotted number comes from the JSON.
import fs from 'node:fs';

const src = process.argv[2] ?? 'bench/results/h200-scaling.json';
const dst = process.argv[3] ?? 'docs/scaling.svg';
const data = JSON.parse(fs.readFileSync(src, 'utf8'));
const rows = data.series;

const W = 980, H = 430, panelW = 420, panelH = 300, top = 70, lefts = [70, 560];
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');
const fmtTok = (n) => (n >= 1 << 20 ? `${n / (1 << 20)}M` : `${n / 1024}K`);
const out = [];
out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(`Slice model on one ${data.gpu}: prefill and decode against context length`)}</text>`);
out.push(`<text x="${W / 2}" y="44" text-anchor="middle" fill="#555">${esc(`${data.model}; chunks of ${data.chunk} tokens; commit ${data.commit}, ${data.date}`)}</text>`);

function axes(x0, title, xlab, ylab) {
  out.push(`<rect x="${x0}" y="${top}" width="${panelW}" height="${panelH}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${x0 + panelW / 2}" y="${top - 8}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="${x0 + panelW / 2}" y="${top + panelH + 36}" text-anchor="middle">${esc(xlab)}</text>`);
  out.push(`<text transform="translate(${x0 - 48} ${top + panelH / 2}) rotate(-90)" text-anchor="middle">${esc(ylab)}</text>`);
}
const xs = rows.map((r) => r.tokens);
const lx0 = Math.log2(xs[0]) - 0.3, lx1 = Math.log2(xs[xs.length - 1]) + 0.3;
const px = (x0, n) => x0 + ((Math.log2(n) - lx0) / (lx1 - lx0)) * panelW;
function xticks(x0) {
  for (const n of xs) {
    const x = px(x0, n);
    out.push(`<line x1="${x}" y1="${top + panelH}" x2="${x}" y2="${top + panelH + 5}" stroke="#333"/>`);
    out.push(`<text x="${x}" y="${top + panelH + 18}" text-anchor="middle">${fmtTok(n)}</text>`);
  }
}
function line(points, color, dash = '') {
  out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" ${dash ? `stroke-dasharray="${dash}"` : ''} points="${points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`);
  for (const [x, y] of points) if (!dash) out.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3" fill="${color}"/>`);
}

// ---- left: prefill seconds per layer kind, log–log ----
const series = [
  ['total', 'prefill_s', '#000'],
  ['softmax attention (1 layer)', 'softmax_attention_s', '#d62728'],
  ['lightning attention (7 layers)', 'lightning_attention_s', '#1f77b4'],
  ['MoE (8 layers)', 'moe_s', '#2ca02c'],
];
const ys = rows.flatMap((r) => series.map(([, k]) => r[k])).filter((v) => v > 0);
const ly0 = Math.floor(Math.log10(Math.min(...ys))), ly1 = Math.ceil(Math.log10(Math.max(...ys)));
const pyL = (v) => top + panelH - ((Math.log10(v) - ly0) / (ly1 - ly0)) * panelH;
axes(lefts[0], 'Prefill time by layer kind', 'prompt tokens (log scale)', 'seconds (log scale)');
xticks(lefts[0]);
for (let e = ly0; e <= ly1; e++) {
  const y = pyL(10 ** e);
  out.push(`<line x1="${lefts[0]}" y1="${y}" x2="${lefts[0] + panelW}" y2="${y}" stroke="#eee"/>`);
  out.push(`<text x="${lefts[0] - 6}" y="${y + 4}" text-anchor="end">${10 ** e >= 1 ? 10 ** e : (10 ** e).toPrecision(1)}</text>`);
}
// Guides through the first softmax / lightning points: slope 2 and slope 1 in log–log.
const g = (key, slope, color) => {
  const r0 = rows[rows.length - 1];
  const pts = rows.map((r) => [px(lefts[0], r.tokens), pyL(r0[key] * (r.tokens / r0.tokens) ** slope)]).filter(([, y]) => y >= top && y <= top + panelH);
  if (pts.length > 1) line(pts, color, '4 4');
};
g('softmax_attention_s', 2, '#d6272880');
g('lightning_attention_s', 1, '#1f77b480');
series.forEach(([label, key, color], i) => {
  line(rows.filter((r) => r[key] > 0).map((r) => [px(lefts[0], r.tokens), pyL(r[key])]), color);
  out.push(`<rect x="${lefts[0] + 10}" y="${top + 10 + i * 16}" width="12" height="3" fill="${color}"/><text x="${lefts[0] + 28}" y="${top + 15 + i * 16}">${esc(label)}</text>`);
});
out.push(`<text x="${lefts[0] + 10}" y="${top + 15 + series.length * 16}" fill="#777">dashed: ∝ N² and ∝ N through the last point</text>`);

// ---- right: decode latency ----
const dec = rows.map((r) => [r.decode_context, r.decode_ms_per_token]);
const dmax = Math.ceil(Math.max(...dec.map(([, v]) => v)) + 0.5);
const pyR = (v) => top + panelH - (v / dmax) * panelH;
axes(lefts[1], 'Batch-1 decode latency', 'context tokens (log scale)', 'ms per token');
xticks(lefts[1]);
for (let v = 0; v <= dmax; v++) {
  const y = pyR(v);
  out.push(`<line x1="${lefts[1]}" y1="${y}" x2="${lefts[1] + panelW}" y2="${y}" stroke="#eee"/>`);
  out.push(`<text x="${lefts[1] - 6}" y="${y + 4}" text-anchor="end">${v}</text>`);
}
line(dec.map(([n, v]) => [px(lefts[1], n), pyR(v)]), '#9467bd');
for (const [n, v] of dec) out.push(`<text x="${px(lefts[1], n)}" y="${pyR(v) - 8}" text-anchor="middle" fill="#555">${v.toFixed(2)}</text>`);
out.push('</svg>');
fs.mkdirSync(new URL('.', `file://${process.cwd()}/${dst}`).pathname, { recursive: true });
fs.writeFileSync(dst, out.join('\n') + '\n');
console.log(`wrote ${dst} from ${src}`);
