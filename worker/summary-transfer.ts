// The snapshot list of an ImageSummary across the worker boundary in columns: a table may declare
// 65,535 snapshots, and structured-cloning 65,535 objects is decoded by the page in one
// main-thread task (~75 ms of CPU for the list alone, measured in Chromium). Over COLUMNS_FROM
// entries, the numbers go as transferred Float64Arrays and the strings as one JSON array each; the
// page rebuilds the same SnapshotDTO objects. A Comlink transfer handler (registered on both ends by
// transfer.ts) for a returned summary or list of summaries.
import * as Comlink from 'comlink';
import type { ImageSummary, SnapshotDTO } from './api.ts';

const COLUMNS_FROM = 1024;
const NUMBERS = ['l1TableOffset', 'l1Size', 'vmStateSize', 'dateSec', 'dateNsec', 'vmClockNsec', 'extraDataSize'] as const;
const OPTIONAL = ['diskSize', 'icount'] as const;

interface Columns {
  ids: string;
  names: string;
  numbers: Float64Array[];
  /** NaN where the field is absent. */
  optional: Float64Array[];
}
type Wire = { summary: Omit<ImageSummary, 'snapshots'>; columns: Columns };

function isSummary(v: unknown): v is ImageSummary {
  return typeof v === 'object' && v !== null && Array.isArray((v as ImageSummary).snapshots) && 'header' in v && 'state' in v;
}

function many(v: unknown): v is ImageSummary | ImageSummary[] {
  const list = Array.isArray(v) ? v : [v];
  return list.length > 0 && list.every(isSummary) && list.some((s) => s.snapshots.length > COLUMNS_FROM);
}

function pack(s: ImageSummary, transfer: Transferable[]): Wire {
  const { snapshots, ...rest } = s;
  const n = snapshots.length;
  const numbers = NUMBERS.map((k) => Float64Array.from(snapshots, (x) => x[k]));
  const optional = OPTIONAL.map((k) => {
    const col = new Float64Array(n);
    for (let i = 0; i < n; i++) col[i] = snapshots[i]![k] ?? NaN;
    return col;
  });
  for (const c of [...numbers, ...optional]) transfer.push(c.buffer);
  return { summary: rest, columns: { ids: JSON.stringify(snapshots.map((x) => x.id)), names: JSON.stringify(snapshots.map((x) => x.name)), numbers, optional } };
}

function unpack(w: Wire): ImageSummary {
  const ids = JSON.parse(w.columns.ids) as string[];
  const names = JSON.parse(w.columns.names) as string[];
  const [l1TableOffset, l1Size, vmStateSize, dateSec, dateNsec, vmClockNsec, extraDataSize] = w.columns.numbers as [Float64Array, Float64Array, Float64Array, Float64Array, Float64Array, Float64Array, Float64Array];
  const [diskSize, icount] = w.columns.optional as [Float64Array, Float64Array];
  const snapshots: SnapshotDTO[] = new Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const s: SnapshotDTO = {
      id: ids[i]!, name: names[i]!, l1TableOffset: l1TableOffset[i]!, l1Size: l1Size[i]!, vmStateSize: vmStateSize[i]!,
      dateSec: dateSec[i]!, dateNsec: dateNsec[i]!, vmClockNsec: vmClockNsec[i]!, extraDataSize: extraDataSize[i]!,
    };
    if (!Number.isNaN(diskSize[i])) s.diskSize = diskSize[i];
    if (!Number.isNaN(icount[i])) s.icount = icount[i];
    snapshots[i] = s;
  }
  return { ...w.summary, snapshots } as ImageSummary;
}

export function installSummaryTransfer(): void {
  Comlink.transferHandlers.set('summary-columns', {
    canHandle: many,
    serialize(v: ImageSummary | ImageSummary[]): [{ list: boolean; wires: Wire[] }, Transferable[]] {
      const transfer: Transferable[] = [];
      const list = Array.isArray(v);
      return [{ list, wires: (list ? v : [v]).map((s) => pack(s, transfer)) }, transfer];
    },
    deserialize(w: { list: boolean; wires: Wire[] }): ImageSummary | ImageSummary[] {
      const out = w.wires.map(unpack);
      return w.list ? out : out[0]!;
    },
  } satisfies Comlink.TransferHandler<ImageSummary | ImageSummary[], { list: boolean; wires: Wire[] }>);
}
