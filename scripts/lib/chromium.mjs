// Headless Chromium for the shop demo's browser tests: the Debian package `chromium`, driven by
// playwright-core through `executablePath` (no browser download). Installed with apt-get when
// missing and we are root (the same path the brokers take); otherwise a message names the package.
//
//   import { ensureChromium } from './scripts/lib/chromium.mjs'
//   const executablePath = ensureChromium()   // '/usr/bin/chromium'
import { ensureBinary } from './brokers.mjs'

/**
 * Returns the path of the `chromium` binary, installing the Debian package first when it is
 * missing and we are root. Throws a ServiceError naming the package otherwise.
 */
export function ensureChromium(options = {}) {
  return ensureBinary('chromium', 'chromium', options)
}

/** Starts nothing: Chromium is launched by its user. Resolves to the binary, like a service's url. */
export async function startChromium(options = {}) {
  const bin = ensureChromium(options)
  return { service: 'chromium', url: bin, bin, root: undefined, stop: async () => {} }
}

/** Nothing to stop: the browser belongs to whoever launched it. */
export function stopChromium() {}
