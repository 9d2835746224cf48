// The files a valid proxy config refers to: TLS certificates, keys and CAs, and secrets kept
// in files. (A discovery file is left out: the proxy waits for one that does not exist yet.) The loader checks the document's shape; whether these files can be
// read is a fact of the machine it runs on, which `breakwater proxy --check` looks at too, so
// a file that says "valid" does not then fail at start for a missing certificate.

import { accessSync, constants, statSync } from 'node:fs'
import type { ProxyConfig, SecretSource } from '../contracts.js'

/** A referenced file that cannot be read: where it is referenced, its path, and why. */
export interface FileProblem {
  readonly path: string
  readonly file: string
  readonly reason: string
}

/**
 * Every file `config` refers to that is missing, not a regular file, or not readable by this
 * process. Paths are taken as the proxy takes them (relative ones from the working folder).
 *
 * @example
 * ```ts
 * for (const p of unreadableFiles(config)) console.error(`${p.path}: cannot read ${p.file}: ${p.reason}`)
 * ```
 */
export function unreadableFiles(config: ProxyConfig): FileProblem[] {
  const refs: { path: string; file: string | undefined }[] = []
  const secret = (path: string, source: SecretSource | undefined): void => {
    if (source !== undefined && 'file' in source)
      refs.push({ path: `${path}.file`, file: source.file })
  }
  for (const [name, service] of config.services) {
    const at = `services.${name}`
    refs.push({ path: `${at}.tls.caFile`, file: service.tls.caFile })
    refs.push({ path: `${at}.tls.certFile`, file: service.tls.certFile })
    refs.push({ path: `${at}.tls.keyFile`, file: service.tls.keyFile })
    const auth = service.auth
    if (auth?.kind === 'bearer') secret(`${at}.auth.bearer`, auth.token)
    else if (auth?.kind === 'api-key') secret(`${at}.auth.apiKey`, auth.key)
  }
  config.listeners.forEach((listener, i) => {
    const tls = listener.tls
    if (tls === undefined) return
    refs.push({ path: `listeners[${i}].tls.certFile`, file: tls.certFile })
    refs.push({ path: `listeners[${i}].tls.keyFile`, file: tls.keyFile })
    refs.push({ path: `listeners[${i}].tls.clientCaFile`, file: tls.clientCaFile })
  })
  secret('admin.token', config.admin?.token)

  const problems: FileProblem[] = []
  for (const { path, file } of refs) {
    if (file === undefined) continue
    const reason = unreadable(file)
    if (reason !== undefined) problems.push({ path, file, reason })
  }
  return problems
}

function unreadable(file: string): string | undefined {
  try {
    if (!statSync(file).isFile()) return 'not a regular file'
    accessSync(file, constants.R_OK)
    return undefined
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    return code === 'ENOENT'
      ? 'no such file'
      : code === 'EACCES'
        ? 'permission denied'
        : String(code)
  }
}
