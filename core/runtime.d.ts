// The few globals core/ may use beyond ECMAScript: the WHATWG Encoding API and the High Resolution
// Time API's clock, which browsers, Web Workers and Node all provide. core/ is compiled without the DOM and Node libraries
// (tsconfig.core.json), so anything else from either runtime is a compile error; this file is
// only part of that config (the browser and Node configs take these names from their own libs).

interface TextDecoder {
  decode(input?: Uint8Array): string;
}
declare var TextDecoder: {
  prototype: TextDecoder;
  new (label?: string, options?: { fatal?: boolean; ignoreBOM?: boolean }): TextDecoder;
};

interface TextEncoder {
  encode(input?: string): Uint8Array<ArrayBuffer>;
}
declare var TextEncoder: {
  prototype: TextEncoder;
  new (): TextEncoder;
};

/** High Resolution Time: milliseconds since the time origin, with a fraction (snapshot timestamps). */
declare var performance: { readonly timeOrigin: number; now(): number };
