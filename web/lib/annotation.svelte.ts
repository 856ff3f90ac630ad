// The Hex view's annotation state: whether Annotate is on, the structures of the shown cluster
// (laid out by the engine, worker/annotate.ts), the selected field and its reading, the selected
// bit range, and the moves between fields the keyboard makes. The layouts and their decoding stay
// in the engine: this class only asks it and draws what it answers.
import { engine } from './engine.ts';
import type { ClusterAnnotationDTO, FieldReadingDTO, ImageId } from '../../worker/api.ts';

/** Byte map codes (worker/api.ts ClusterAnnotationDTO.bytes). */
const ROLE_MASK = 0x1f;
const ODD_ITEM = 0x20;
const FIELD_START = 0x40;
const NO_FIELD = 0xff;

/** What the view colours a role as: a few families a reader can learn at a glance. */
export const ROLE_FAMILY: Record<string, { family: string; label: string }> = {
  offset: { family: 'offset', label: 'offset' },
  count: { family: 'number', label: 'count or size' },
  bytes: { family: 'number', label: 'count or size' },
  log2: { family: 'number', label: 'count or size' },
  sectors: { family: 'number', label: 'count or size' },
  flag: { family: 'flags', label: 'flags' },
  features: { family: 'flags', label: 'flags' },
  bitmap: { family: 'flags', label: 'flags' },
  string: { family: 'text', label: 'text' },
  seconds: { family: 'time', label: 'time' },
  nanoseconds: { family: 'time', label: 'time' },
  magic: { family: 'ident', label: 'identifier or type' },
  version: { family: 'ident', label: 'identifier or type' },
  enum: { family: 'ident', label: 'identifier or type' },
  type: { family: 'ident', label: 'identifier or type' },
  refcount: { family: 'refcount', label: 'refcount' },
  data: { family: 'entry', label: 'table entry' },
  reserved: { family: 'reserved', label: 'reserved or padding' },
};

export class Annotation {
  on = $state(false);
  data = $state.raw<ClusterAnnotationDTO | null>(null);
  reading = $state.raw<FieldReadingDTO | null>(null);
  /** The selected bit range of the reading (an index in reading.bits). */
  bit = $state<number | null>(null);
  error = $state<string | null>(null);
  private asked = 0;
  private askedField = 0;

  async load(id: ImageId, clusterStart: number): Promise<void> {
    const n = ++this.asked;
    this.error = null;
    try {
      const d = await engine().annotate(id, clusterStart);
      if (n === this.asked) this.data = d;
    } catch (e) {
      if (n === this.asked) this.error = e instanceof Error ? e.message : String(e);
    }
  }

  /** Select the field holding host byte `hostOffset` (nothing when no structure holds it). */
  async select(id: ImageId, hostOffset: number): Promise<void> {
    const d = this.data;
    if (!d) return;
    const n = ++this.askedField;
    const r = await engine().readField(id, d.clusterStart, hostOffset);
    if (n !== this.askedField) return;
    this.reading = r;
    this.bit = null;
  }

  clear(): void {
    this.reading = null;
    this.bit = null;
  }

  code(rel: number): number {
    return this.data?.bytes[rel] ?? NO_FIELD;
  }

  /** The colour family of the byte at `rel` in the cluster, '' when no structure holds it. */
  family(rel: number): string {
    const c = this.code(rel);
    if (c === NO_FIELD) return '';
    return ROLE_FAMILY[this.data!.roles[c & ROLE_MASK]!]?.family ?? 'entry';
  }

  odd(rel: number): boolean {
    const c = this.code(rel);
    return c !== NO_FIELD && (c & ODD_ITEM) !== 0;
  }

  starts(rel: number): boolean {
    const c = this.code(rel);
    return c !== NO_FIELD && (c & FIELD_START) !== 0;
  }

  /** The families in the shown cluster, for the legend. */
  families(): Array<{ family: string; label: string }> {
    const d = this.data;
    if (!d) return [];
    const seen = new Set<number>();
    for (const c of d.bytes) if (c !== NO_FIELD) seen.add(c & ROLE_MASK);
    const out = new Map<string, string>();
    for (const i of [...seen].sort((a, b) => a - b)) {
      const f = ROLE_FAMILY[d.roles[i]!];
      if (f) out.set(f.family, f.label);
    }
    return [...out].map(([family, label]) => ({ family, label }));
  }

  /** The first byte of the next (+1) or previous (-1) field from `rel`, in the cluster. */
  nextStart(rel: number, dir: 1 | -1): number | null {
    const d = this.data;
    if (!d) return null;
    for (let i = rel + dir; i >= 0 && i < d.bytes.length; i += dir) if (this.starts(i)) return i;
    return null;
  }

  /** Labels of a row of 16 bytes: what starts in it (table items by index, fields by name). */
  rowLabel(rowStart: number): string {
    const d = this.data;
    if (!d) return '';
    const names: string[] = [];
    const rowEnd = rowStart + 16;
    for (const r of d.regions) {
      const end = r.at + r.count * r.stride;
      if (end <= rowStart || r.at >= rowEnd) continue;
      if (r.count === 1) {
        for (const f of r.variants[0]!) if (r.at + f.offset >= rowStart && r.at + f.offset < rowEnd) names.push(f.name);
        continue;
      }
      const first = Math.max(0, Math.ceil((rowStart - r.at) / r.stride));
      const last = Math.min(r.count - 1, Math.floor((rowEnd - 1 - r.at) / r.stride));
      if (last < first) continue;
      const a = r.firstIndex + first;
      const b = r.firstIndex + last;
      const many = r.itemName.replace(/y$/, 'ie') + 's';
      names.push(a === b ? `${r.itemName} ${a}` : last - first === 1 ? `${many} ${a}, ${b}` : `${many} ${a}–${b}`);
    }
    return names.join(' · ');
  }

  /** Whether the byte at host offset `off` is in the selected field, and in its selected bits. */
  selected(off: number): 'bits' | 'field' | null {
    const r = this.reading;
    if (!r || off < r.at || off >= r.at + r.size) return null;
    const b = this.bit === null ? null : r.bits?.[this.bit];
    return b && off >= b.at && off < b.at + b.size ? 'bits' : 'field';
  }
}
