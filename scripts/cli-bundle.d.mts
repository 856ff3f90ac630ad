// Types of scripts/cli-bundle.mjs for the TypeScript tests that import it.
export declare const REQUIRE_BANNER: string;
export declare function bundleCli(outfile: string, options?: { lazy?: boolean; minify?: boolean }): Promise<string>;
