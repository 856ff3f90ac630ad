// Draws the app icons (public/icon-192.png, public/icon-512.png, public/icon.svg): a 4×4 "cluster
// map" on a dark rounded tile. Run once with `node web/tools/make-icons.mjs`; outputs are committed.
import { deflateSync } from 'node:zlib';
import { writeFileSync } from 'node:fs';

const BG = [15, 23, 32];
// One colour per cluster kind, the same palette as the app (web/lib/kinds.ts).
const C = {
  hdr: [148, 163, 184], l1: [245, 158, 11], l2: [250, 204, 21], rt: [168, 85, 247],
  rb: [192, 132, 252], data: [34, 197, 94], shared: [20, 184, 166], free: [51, 65, 85], snap: [59, 130, 246],
};
const GRID = [
  ['hdr', 'rt', 'rb', 'l1'],
  ['l2', 'data', 'data', 'shared'],
  ['data', 'snap', 'shared', 'free'],
  ['data', 'data', 'free', 'free'],
];

function crc32(buf) {
  let c, crc = 0xffffffff;
  for (let n = 0; n < buf.length; n++) {
    c = (crc ^ buf[n]) & 0xff;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    crc = (crc >>> 8) ^ c;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
function png(size) {
  const px = Buffer.alloc(size * size * 4);
  const r = size * 0.18; // corner radius
  const pad = size * 0.14, gap = size * 0.035;
  const cell = (size - 2 * pad - 3 * gap) / 4;
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) {
    const i = (y * size + x) * 4;
    // rounded-square mask
    const dx = Math.max(r - x, 0, x - (size - 1 - r)), dy = Math.max(r - y, 0, y - (size - 1 - r));
    const inside = dx * dx + dy * dy <= r * r;
    if (!inside) { px[i + 3] = 0; continue; }
    let col = BG;
    const gx = (x - pad) / (cell + gap), gy = (y - pad) / (cell + gap);
    if (gx >= 0 && gy >= 0 && gx < 4 && gy < 4 && gx % 1 <= cell / (cell + gap) && gy % 1 <= cell / (cell + gap)) {
      col = C[GRID[Math.floor(gy)][Math.floor(gx)]];
    }
    px[i] = col[0]; px[i + 1] = col[1]; px[i + 2] = col[2]; px[i + 3] = 255;
  }
  const raw = Buffer.alloc(size * (size * 4 + 1));
  for (let y = 0; y < size; y++) { raw[y * (size * 4 + 1)] = 0; px.copy(raw, y * (size * 4 + 1) + 1, y * size * 4, (y + 1) * size * 4); }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0); ihdr.writeUInt32BE(size, 4); ihdr[8] = 8; ihdr[9] = 6; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw, { level: 9 })), chunk('IEND', Buffer.alloc(0))]);
}
function svg() {
  const size = 64, pad = size * 0.14, gap = size * 0.035, cell = (size - 2 * pad - 3 * gap) / 4;
  const rgb = (c) => `rgb(${c.join(',')})`;
  let cells = '';
  GRID.forEach((row, y) => row.forEach((k, x) => {
    cells += `<rect x="${(pad + x * (cell + gap)).toFixed(2)}" y="${(pad + y * (cell + gap)).toFixed(2)}" width="${cell.toFixed(2)}" height="${cell.toFixed(2)}" rx="1" fill="${rgb(C[k])}"/>`;
  }));
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="11.5" fill="${rgb(BG)}"/>${cells}</svg>\n`;
}
const out = new URL('../../public/', import.meta.url);
writeFileSync(new URL('icon-192.png', out), png(192));
writeFileSync(new URL('icon-512.png', out), png(512));
writeFileSync(new URL('icon.svg', out), svg());
writeFileSync(new URL('favicon.svg', out), svg());
