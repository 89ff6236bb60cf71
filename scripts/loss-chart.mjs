#!/usr/bin/env node
// Draws docs/training-loss.svg from bench/results/h200-train.json (written by `node dist/bench/train.js` on the
// GPU): training loss (thin, every logged step) and validation loss (dots) against tokens seen, one colour per run
// (the MoE model and the dense model of equal active compute). Plain SVG, no dependencies; every plotted number
// comes from the JSON.
import fs from 'node:fs';

const src = process.argv[2] ?? 'bench/results/h200-train.json';
const dst = process.argv[3] ?? 'docs/training-loss.svg';
const data = JSON.parse(fs.readFileSync(src, 'utf8'));
const colors = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd'];

const W = 820, H = 480, left = 70, top = 80, pw = 560, ph = 320;
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');
const out = [];
out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(`Training loss on one ${data.gpu}: MoE vs dense at equal active compute`)}</text>`);
out.push(`<text x="${W / 2}" y="44" text-anchor="middle" fill="#555">${esc(`${data.corpus}; commit ${data.commit}, ${data.date}`)}</text>`);

const all = data.runs.flatMap((r) => r.records);
const maxTok = Math.max(...all.map((p) => p.tokensSeen));
const losses = all.flatMap((p) => [p.loss, p.valLoss].filter((v) => v !== undefined && Number.isFinite(v)));
// The first steps sit near ln(V); start the axis where the curves become interesting.
const sorted = [...losses].sort((a, b) => a - b);
const y0 = Math.floor(sorted[0] * 2) / 2, y1 = Math.ceil(sorted[Math.floor(sorted.length * 0.98)] * 2) / 2 + 0.5;
const px = (t) => left + (t / maxTok) * pw;
const py = (v) => top + ph - ((Math.min(v, y1) - y0) / (y1 - y0)) * ph;

out.push(`<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
for (let v = y0; v <= y1 + 1e-9; v += 0.5) {
  out.push(`<line x1="${left}" y1="${py(v)}" x2="${left + pw}" y2="${py(v)}" stroke="#eee"/>`);
  out.push(`<text x="${left - 6}" y="${py(v) + 4}" text-anchor="end">${v.toFixed(1)}</text>`);
}
const step = 10 ** Math.floor(Math.log10(maxTok / 4));
const tick = [1, 2, 5].map((m) => m * step).find((s) => maxTok / s <= 8) ?? 10 * step;
for (let t = 0; t <= maxTok; t += tick) {
  out.push(`<line x1="${px(t)}" y1="${top + ph}" x2="${px(t)}" y2="${top + ph + 5}" stroke="#333"/>`);
  out.push(`<text x="${px(t)}" y="${top + ph + 18}" text-anchor="middle">${t >= 1e6 ? `${t / 1e6}M` : `${t / 1e3}K`}</text>`);
}
out.push(`<text x="${left + pw / 2}" y="${top + ph + 40}" text-anchor="middle">tokens seen</text>`);
out.push(`<text transform="translate(${left - 48} ${top + ph / 2}) rotate(-90)" text-anchor="middle">cross-entropy (nats / token)</text>`);

data.runs.forEach((run, i) => {
  const c = colors[i % colors.length];
  const pts = run.records.map((p) => `${px(p.tokensSeen).toFixed(1)},${py(p.loss).toFixed(1)}`).join(' ');
  out.push(`<polyline fill="none" stroke="${c}" stroke-width="1" stroke-opacity="0.55" points="${pts}"/>`);
  const val = run.records.filter((p) => p.valLoss !== undefined);
  if (val.length > 1) out.push(`<polyline fill="none" stroke="${c}" stroke-width="2.5" points="${val.map((p) => `${px(p.tokensSeen).toFixed(1)},${py(p.valLoss).toFixed(1)}`).join(' ')}"/>`);
  for (const p of val) out.push(`<circle cx="${px(p.tokensSeen).toFixed(1)}" cy="${py(p.valLoss).toFixed(1)}" r="3.5" fill="${c}"/>`);
  const ly = top + 20 + i * 58;
  out.push(`<line x1="${left + pw + 16}" y1="${ly}" x2="${left + pw + 40}" y2="${ly}" stroke="${c}" stroke-width="2.5"/>`);
  out.push(`<text x="${left + pw + 46}" y="${ly + 4}" font-weight="bold">${esc(run.name)}</text>`);
  const lines = [
    `${(run.params / 1e6).toFixed(1)}M params, ${(run.activeParams / 1e6).toFixed(1)}M active`,
    `final val ${run.finalValLoss.toFixed(3)}`,
    `${Math.round(run.tokensPerSec).toLocaleString('en-US')} tokens/s`,
  ];
  lines.forEach((t, k) => out.push(`<text x="${left + pw + 46}" y="${ly + 18 + k * 14}" fill="#444" font-size="11">${esc(t)}</text>`));
});
out.push(`<text x="${left + pw + 16}" y="${top + ph - 6}" fill="#555" font-size="11">thin: training loss</text>`);
out.push(`<text x="${left + pw + 16}" y="${top + ph + 8}" fill="#555" font-size="11">thick + dots: validation</text>`);
out.push('</svg>');
fs.writeFileSync(dst, out.join('\n') + '\n');
console.log(`wrote ${dst} from ${src}`);
