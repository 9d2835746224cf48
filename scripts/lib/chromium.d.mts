// Types for scripts/lib/chromium.mjs, so the browser tests can import it.

/** Options of {@link ensureChromium}. */
export interface EnsureChromiumOptions {
  /** Receives progress lines (installation). */
  readonly log?: (line: string) => void
}

/**
 * The path of the `chromium` binary (Debian package `chromium`), installed with apt-get first
 * when it is missing and this process runs as root; otherwise throws a ServiceError naming
 * the package.
 */
export declare function ensureChromium(options?: EnsureChromiumOptions): string
