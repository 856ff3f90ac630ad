// The memory of the browser tab in a benchmark: the resident set (VmRSS, /proc) of Chromium's
// renderer process of one page (the page and its dedicated workers run in it, here also the app's
// service worker; see `rendererOf`), sampled every 20 ms while a phase runs; its peak is the
// tab's peak memory. Linux only.
import * as fs from 'node:fs';

const TRACE = !!process.env.BENCH_MEM_TRACE;

/** Descendants of `root` (pids), from /proc/<pid>/stat. */
function descendants(root) {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  const out = [];
  const todo = [root];
  while (todo.length) for (const k of kids.get(todo.pop()) ?? []) out.push(k), todo.push(k);
  return out;
}

export function renderers() {
  return descendants(process.pid).filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--type=renderer');
    } catch {
      return false;
    }
  });
}

function rssKiB(pid) {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function threadNames(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).map((t) => fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim());
  } catch {
    return [];
  }
}

const runsWorker = (pid) => threadNames(pid).some((n) => n.startsWith('DedicatedWorker'));

/**
 * Open a page; its renderer is found later (`sampleRenderers`) as the one running a dedicated
 * worker (the app's engine) that did not run one before: Chromium gives a new page the spare
 * renderer it keeps ready, not a process of its own at once.
 */
export async function rendererOf(open) {
  const before = new Set(renderers().filter(runsWorker));
  const page = await open();
  return { page, pids: before };
}

/** Sample the renderer of the page opened by rendererOf (`before`: its `pids`) until stop(); returns its first and peak resident set (MiB). */
export function sampleRenderers(before, everyMs = 20) {
  let peak = 0;
  let first = 0;
  let tab = [];
  let n = 0;
  const tick = () => {
    if (tab.length !== 1 && n++ % 10 === 0) tab = renderers().filter((p) => !before.has(p) && runsWorker(p));
    if (tab.length !== 1) return;
    const now = rssKiB(tab[0]);
    if (TRACE) process.stderr.write(`mem ${Date.now() % 1e6} ${(now / 1024).toFixed(0)}\n`);
    first ||= now;
    peak = Math.max(peak, now);
  };
  tick();
  const timer = setInterval(tick, everyMs);
  return {
    stop: () => {
      clearInterval(timer);
      tick();
      return { peakMiB: peak / 1024, startMiB: first / 1024, found: tab.length === 1 };
    },
  };
}
