// The rows 0..n-1 of a virtual list as an array-like that holds nothing: the list (virtua) reads
// only `length` and the few indices it draws, so an L1 table of 4 Mi entries costs no 4 Mi-element
// array built on the main thread (that was ~160 ms of one task for 2 Mi entries).
export function indexList(n: number): readonly number[] {
  const length = Math.max(0, Math.floor(n));
  return new Proxy([] as number[], {
    get(target, key, receiver) {
      if (key === 'length') return length;
      if (typeof key === 'string') {
        const i = Number(key);
        if (Number.isInteger(i) && String(i) === key) return i >= 0 && i < length ? i : undefined;
      }
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === 'string') {
        const i = Number(key);
        if (Number.isInteger(i) && String(i) === key) return i >= 0 && i < length;
      }
      return Reflect.has(target, key);
    },
  });
}
