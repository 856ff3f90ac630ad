// An address: what the page shows, written in the URL's fragment so a link restores it —
// #img=gallery:snapshots&view=translate&offset=0x48000. Parsing and writing only (no state).
//   img      demo | gallery:<id> | file:<name>  (a person's file is named, its bytes never are)
//   view     a view's id (web/views/registry.ts)
//   sel      the selection: cluster:<host offset> | l1:<i> | l2:<l1 index>.<l2 index> | snap:<id>
//            | refcount:<cluster> | rt:<i> | field:<spec name>
//   offset   Translation's guest offset; through: the snapshot ID it reads through
//   lesson   a lesson's id, and step its step (1-based)
// The older form #/view (the rail's links) is read too.

export interface Address {
  img?: string;
  view?: string;
  sel?: string;
  offset?: number;
  through?: string;
  lesson?: string;
  step?: number;
}

const KEYS = ['img', 'view', 'sel', 'offset', 'through', 'lesson', 'step'] as const;

function num(v: string | null): number | undefined {
  if (v === null || !/^(0x[0-9a-f]+|\d+)$/i.test(v)) return undefined;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Read an address from a fragment ("#img=…&view=…" or "#/view"). */
export function parseAddress(hash: string): Address {
  const h = hash.replace(/^#/, '');
  if (h.startsWith('/')) return h.length > 1 ? { view: h.slice(1) } : {};
  const p = new URLSearchParams(h);
  const a: Address = {};
  for (const k of ['img', 'view', 'sel', 'through', 'lesson'] as const) {
    const v = p.get(k);
    if (v) a[k] = v;
  }
  const offset = num(p.get('offset'));
  if (offset !== undefined) a.offset = offset;
  const step = num(p.get('step'));
  if (step !== undefined) a.step = step;
  return a;
}

/** Write an address as a fragment, its keys always in the same order (offsets in hex). */
export function formatAddress(a: Address): string {
  const parts: string[] = [];
  for (const k of KEYS) {
    const v = a[k];
    if (v === undefined || v === '') continue;
    const text = k === 'offset' ? '0x' + (v as number).toString(16) : String(v);
    // Keep ':' and '.' readable; encode the rest (file names may hold anything).
    parts.push(`${k}=${encodeURIComponent(text).replace(/%3A/gi, ':')}`);
  }
  return parts.length ? '#' + parts.join('&') : '';
}
