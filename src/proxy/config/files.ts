// The files a valid proxy config refers to: TLS certificates, keys and CAs, and secrets kept
// in files. (A discovery file is left out: the proxy waits for one that does not exist yet.)
// The loader checks the document's shape; whether these files can be read, and whether the
// TLS ones hold what they should, is a fact of the machine it runs on, which `breakwater proxy
// --check` looks at too, so a file that says "valid" does not then fail at start for a missing
// certificate, or fail every request for a CA file that holds no certificate. The file of a
// sqlite: idempotency store is looked at too, without creating anything: it need not exist
// yet (the start creates it and its missing folders), but a folder in its place, or a file
// where one of its folders goes, stops the start.

import { createPrivateKey, X509Certificate } from 'node:crypto'
import { accessSync, constants, readFileSync, statSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createSecureContext } from 'node:tls'
import { parseDatabaseUrl } from '../../stores/open.js'
import { folderChain, visibleStatOf } from '../../stores/sqlite-path.js'
import type { ProxyConfig, SecretSource } from '../contracts.js'
import { credentialProblem } from '../upstream/credentials.js'
import { ConfigInvalidError, echo } from './errors.js'

/** A referenced file that cannot be used: where it is referenced, its path, and why. */
export interface FileProblem {
  readonly path: string
  readonly file: string
  readonly reason: string
}

/** What a referenced file must hold. */
type Content = 'certificate' | 'private key' | 'secret' | 'admin token'

interface FileRef {
  readonly path: string
  readonly file: string | undefined
  readonly content: Content
}

/** A certificate and its key, which must belong together. */
interface Pair {
  readonly cert: FileRef
  readonly key: FileRef
}

/**
 * Every file `config` refers to that is missing, not a regular file, not readable by this
 * process, or (for TLS) does not hold a PEM certificate or private key, and every key that
 * does not match its certificate; and a sqlite: idempotency store whose path is a folder or
 * lies under a file (see {@link storePathProblem}). Paths are taken as the proxy takes them
 * (relative ones from the working folder).
 *
 * @example
 * ```ts
 * for (const p of unusableFiles(config)) console.error(`${p.path}: ${p.file}: ${p.reason}`)
 * ```
 */
export function unusableFiles(config: ProxyConfig): FileProblem[] {
  const refs: FileRef[] = []
  const pairs: Pair[] = []
  const ref = (path: string, file: string | undefined, content: Content): FileRef => {
    const made = { path, file, content }
    refs.push(made)
    return made
  }
  const secret = (path: string, source: SecretSource | undefined): void => {
    if (source !== undefined && 'file' in source) ref(`${path}.file`, source.file, 'secret')
  }
  const tls = (
    at: string,
    files: { readonly certFile?: string | undefined; readonly keyFile?: string | undefined },
    ca: { option: string; file: string | undefined },
  ): void => {
    ref(`${at}.${ca.option}`, ca.file, 'certificate')
    pairs.push({
      cert: ref(`${at}.certFile`, files.certFile, 'certificate'),
      key: ref(`${at}.keyFile`, files.keyFile, 'private key'),
    })
  }
  for (const [name, service] of config.services) {
    const at = `services.${name}`
    tls(`${at}.tls`, service.tls, { option: 'caFile', file: service.tls.caFile })
    const auth = service.auth
    if (auth?.kind === 'bearer') secret(`${at}.auth.bearer`, auth.token)
    else if (auth?.kind === 'api-key') secret(`${at}.auth.apiKey`, auth.key)
  }
  config.listeners.forEach((listener, i) => {
    const files = listener.tls
    if (files === undefined) return
    tls(`listeners[${i}].tls`, files, { option: 'clientCaFile', file: files.clientCaFile })
  })
  const adminToken = config.admin?.token
  if (adminToken !== undefined && 'file' in adminToken)
    ref('admin.token.file', adminToken.file, 'admin token')

  const problems: FileProblem[] = []
  const unusable = new Set<FileRef>()
  for (const at of refs) {
    if (at.file === undefined) continue
    const reason = unreadable(at.file) ?? wrongContent(at.file, at.content)
    if (reason === undefined) continue
    unusable.add(at)
    problems.push({ path: at.path, file: at.file, reason })
  }
  for (const { cert, key } of pairs) {
    if (cert.file === undefined || key.file === undefined) continue
    if (unusable.has(cert) || unusable.has(key)) continue
    try {
      createSecureContext({ cert: readFileSync(cert.file), key: readFileSync(key.file) })
    } catch (error) {
      problems.push({
        path: key.path,
        file: key.file,
        reason: `not the key of the certificate ${echo(cert.file)} (${(error as Error).message})`,
      })
    }
  }
  const store = config.idempotency?.url
  const filename = store === undefined ? undefined : sqliteFile(store)
  const reason = filename === undefined ? undefined : storePathProblem(filename)
  if (filename !== undefined && reason !== undefined)
    problems.push({ path: 'idempotency.url', file: filename, reason })
  return problems
}

/** The database file a sqlite: store URL names, or undefined for any other store. */
function sqliteFile(url: string): string | undefined {
  if (url === 'memory') return undefined
  try {
    const target = parseDatabaseUrl(url)
    return target.dialect === 'sqlite' && target.filename !== ':memory:'
      ? target.filename
      : undefined
  } catch {
    // The loader refused it already (checks.ts); nothing names a path here.
    return undefined
  }
}

/**
 * Why the start could not open a SQLite database at `filename`, judged as the driver's
 * prepareFolder judges it but without creating anything: a folder in the file's place, or an
 * existing part of the path that is not a folder. A missing file and missing folders are no
 * problem (the start creates them).
 */
function storePathProblem(filename: string): string | undefined {
  if (visibleStatOf(filename)?.isDirectory())
    return 'a folder, not a file (SQLite needs a file here)'
  // The nearest existing part of the folder path is the one that must be a folder.
  const { nearest, stats } = folderChain(filename, visibleStatOf)
  if (stats !== undefined && !stats.isDirectory())
    return `${echo(nearest)} is a file, not a folder (the database's folders cannot be made)`
  return undefined
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

function wrongContent(file: string, content: Content): string | undefined {
  if (content === 'secret') return secretProblem(readFileSync(file, 'utf8'))
  if (content === 'admin token') return adminTokenProblem(readFileSync(file, 'utf8'))
  return pemProblem(readFileSync(file), content)
}

/**
 * Why the text of a service's credential (from its file or its environment variable) cannot
 * be sent, or undefined when it can: empty (or whitespace only), or a line break or control
 * character inside that no header value can carry. Either way every request to the service
 * would go without the credential (see {@link credentialProblem}).
 */
export function secretProblem(text: string): string | undefined {
  const problem = credentialProblem(text)
  const effect = 'requests would go without the credential'
  if (problem === 'empty') return `empty (or whitespace only): ${effect}`
  if (problem === 'unheadable')
    return `a line break or control character inside, which no header can carry: ${effect}`
  return undefined
}

/**
 * Why the text of an admin token holds no token a client could present, or undefined when it
 * holds one. The admin API takes the trimmed text and compares it with the one word after
 * `Authorization: Bearer`, which node reads as latin1: an empty text (or whitespace only) is no
 * token, and one with whitespace, a control character or a non-ASCII character inside is one
 * no header can carry as written, so either way every /admin/ request would be refused with
 * 401 while the proxy looked healthy.
 */
export function adminTokenProblem(text: string): string | undefined {
  const token = text.trim()
  if (token === '') return `empty (or whitespace only): ${adminTokenRule}`
  if (/[^\x21-\x7e]/.test(token))
    return `a character outside visible ASCII inside: ${adminTokenRule}`
  return undefined
}

const adminTokenRule =
  'the admin token must be one word of visible ASCII characters, or every /admin/ request would be refused'

/**
 * Refuses, as {@link ConfigInvalidError} (code `CONFIG_INVALID`) naming `admin.token.file`, a
 * config (only its `admin` is read) whose admin token file cannot be read or holds no usable
 * token (see {@link adminTokenProblem}): the proxy would start and refuse every /admin/
 * request. Called at start, before anything is bound, and on each reload with the admin
 * settings the running admin API was started with; `--check` reports the same through
 * {@link unusableFiles}.
 * A token from `{ env }` is refused by checkEnvSecrets (env-secrets.ts) instead, with the
 * services' `{ env }` credentials, at start, by `--check` and on a reload.
 *
 * @example
 * ```ts
 * await checkAdminTokenFile(config, 'breakwater.yaml') // throws ConfigInvalidError
 * ```
 */
export async function checkAdminTokenFile(
  config: Pick<ProxyConfig, 'admin'>,
  source: string,
): Promise<void> {
  const token = config.admin?.token
  if (token === undefined || !('file' in token)) return
  let reason: string | undefined
  try {
    reason = adminTokenProblem(await readFile(token.file, 'utf8'))
  } catch (error) {
    reason = unreadable(token.file) ?? String((error as NodeJS.ErrnoException).code ?? error)
  }
  if (reason === undefined) return
  throw new ConfigInvalidError(source, [
    {
      path: 'admin.token.file',
      message: `${echo(token.file)}: ${reason}`,
      line: undefined,
      column: undefined,
    },
  ])
}

/**
 * Why `pem` is not a PEM `content` (Node's own TLS options skip what they cannot parse in a
 * CA file, so a file of garbage would only show as failed connections), or undefined when it
 * is one.
 */
export function pemProblem(
  pem: Buffer,
  content: 'certificate' | 'private key',
): string | undefined {
  try {
    if (content === 'certificate') new X509Certificate(pem)
    else createPrivateKey(pem)
    return undefined
  } catch (error) {
    return `not a PEM ${content} (${(error as Error).message})`
  }
}
