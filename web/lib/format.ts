// Number formatting shared by every view: offsets in hex (QEMU prints %#x), sizes in binary units.

export function hex(n: number): string {
  return '0x' + n.toString(16);
}

/** Hex padded to a fixed width, for columns that must line up. */
export function hexPad(n: number, digits = 8): string {
  return '0x' + n.toString(16).padStart(digits, '0');
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  let u = 0;
  let v = n;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(v < 10 ? 2 : 1)} ${UNITS[u]}`;
}

/** One formatter for the page: toLocaleString builds one per call (a 20-row Header took ~10 ms). */
const GROUPED = new Intl.NumberFormat('en-US');

export function grouped(n: number): string {
  return GROUPED.format(n);
}

/**
 * A label cut to `max` characters, the cut marked with an ellipsis: a damaged table's snapshot ID
 * or name may be 64 KiB, and a <select> lays out every option's text to size itself (two pickers
 * of a 32 KiB ID were 46 ms of layout in one task).
 */
export function clip(s: string, max = 100): string {
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function date(sec: number): string {
  if (!sec) return '—';
  return new Date(sec * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

/** Guest run time like qemu-img's "VM CLOCK" column: HH:MM:SS.mmm. */
export function vmClock(nsec: number): string {
  const ms = Math.floor(nsec / 1e6);
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const s = Math.floor((ms % 60_000) / 1000);
  return `${String(h).padStart(4, '0')}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}.${String(ms % 1000).padStart(3, '0')}`;
}
