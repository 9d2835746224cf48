import { readFileSync } from 'node:fs'
import { createSecureContext } from 'node:tls'
import { InvalidOptionError } from '../../core/errors.js'
import type { Logger } from '../../observability/logger.js'
import { pemProblem } from '../config/files.js'
import type { OutboundAuthConfig, SecretSource, UpstreamTlsConfig } from '../contracts.js'
import { type FileWatch, watchFileContent } from './file-watch.js'

// Secrets and TLS files of one service, kept current: file sources are watched and re-read
// when they change. Secret values are never logged: log lines name the source, not the value.

function describeSource(source: SecretSource): string {
  return 'env' in source ? `env ${source.env}` : `file ${source.file}`
}

// What a header value cannot hold (the rule of node:http's own check): a credential with a line
// break or another control character inside would be refused by the pool at every request, which
// reads as the service failing to connect (retried, counted by the breaker, ejecting endpoints).
const notInHeaderValue = /[^\t\x20-\x7e\x80-\xff]/

/**
 * Why a credential's text (as read from its variable or file) cannot be sent, or undefined
 * when it can: `empty` (or whitespace only) or `unheadable` (a line break or control character
 * inside, which no header value can carry). Either way requests go without the credential.
 */
export function credentialProblem(secret: string): 'empty' | 'unheadable' | undefined {
  const trimmed = secret.trim()
  if (trimmed === '') return 'empty'
  return notInHeaderValue.test(trimmed) ? 'unheadable' : undefined
}

function readOptional(path: string): Buffer | undefined {
  try {
    return readFileSync(path)
  } catch {
    return undefined
  }
}

/** The credential header a service adds to every outbound request. */
export class OutboundAuth {
  /** Lower-case header name (`authorization` or the API key header). */
  readonly header: string
  /** The header value, or undefined when the secret is missing (then nothing is added). */
  value: string | undefined
  readonly #watch: FileWatch | undefined

  constructor(config: OutboundAuthConfig, logger: Logger, service: string) {
    const source = config.kind === 'bearer' ? config.token : config.key
    this.header = config.kind === 'bearer' ? 'authorization' : config.header.toLowerCase()
    // Undefined for an empty secret, null for one no header can carry (warned about here).
    const render = (secret: string): string | undefined | null => {
      const problem = credentialProblem(secret)
      if (problem === 'empty') return undefined
      if (problem === 'unheadable') {
        logger.warn(
          'upstream credential unusable: it holds a line break or control character no header value can carry; requests go without it',
          { service, source: describeSource(source) },
        )
        return null
      }
      const trimmed = secret.trim()
      return config.kind === 'bearer' ? `Bearer ${trimmed}` : trimmed
    }
    let value: string | undefined | null
    // A variable unset or unusable is refused before a config is applied (checkEnvSecrets):
    // the warnings below are then for a file, which may be rotated into place later.
    if ('env' in source) {
      value = render(process.env[source.env] ?? '')
    } else {
      const initial = readOptional(source.file)
      value = initial === undefined ? undefined : render(initial.toString('utf8'))
      this.#watch = watchFileContent(
        source.file,
        initial,
        (content) => {
          const next = render(content.toString('utf8'))
          this.value = next ?? undefined
          if (next !== null)
            logger.info('upstream credential reloaded', { service, source: describeSource(source) })
        },
        (error) =>
          logger.warn('upstream credential file unreadable', {
            service,
            source: describeSource(source),
            error: (error as Error).message,
          }),
      )
    }
    this.value = value ?? undefined
    if (value === undefined)
      logger.warn('upstream credential missing; requests go without it', {
        service,
        source: describeSource(source),
      })
  }

  /** Stops watching the secret's file. */
  close(): void {
    this.#watch?.close()
  }
}

/** The PEM material of a service's TLS origination. */
export interface TlsFiles {
  readonly ca: Buffer | undefined
  readonly cert: Buffer | undefined
  readonly key: Buffer | undefined
}

/**
 * A service's TLS files, read at start and re-read when any of them changes. A new set is
 * applied only when Node accepts it as a secure context (a certificate written before its key
 * is not applied until the key matches), then `onChange` rebuilds the pools.
 */
export class TlsMaterial {
  /** The files as last applied. */
  files: TlsFiles
  readonly #config: UpstreamTlsConfig
  readonly #watches: FileWatch[] = []
  readonly #logger: Logger
  readonly #service: string
  /** Called after a new, valid set of files was applied. */
  onChange: (() => void) | undefined

  constructor(config: UpstreamTlsConfig, logger: Logger, service: string) {
    this.#config = config
    this.#logger = logger
    this.#service = service
    const read = (option: string, path: string | undefined): Buffer | undefined => {
      if (path === undefined) return undefined
      const content = readOptional(path)
      if (content === undefined)
        throw new InvalidOptionError(`services.${service}.tls.${option}`, 'a readable file', path)
      return content
    }
    this.files = {
      ca: read('caFile', config.caFile),
      cert: read('certFile', config.certFile),
      key: read('keyFile', config.keyFile),
    }
    // Refused at start: otherwise the proxy would start and then fail every request to this
    // service with a connect error that names no file.
    const problem = tlsFilesProblem(this.files)
    if (problem !== undefined)
      throw new InvalidOptionError(
        `services.${service}.tls.${problem.option}`,
        problem.expected.replace('{service}', service),
        config[problem.option],
      )
    if (!config.verify)
      logger.warn('TLS verification is off for this upstream service', { service })
    for (const path of [config.caFile, config.certFile, config.keyFile]) {
      if (path === undefined) continue
      this.#watches.push(
        watchFileContent(
          path,
          readOptional(path),
          () => this.#reload(),
          (error) =>
            logger.warn('TLS file unreadable', {
              service,
              file: path,
              error: (error as Error).message,
            }),
        ),
      )
    }
  }

  /** undici `connect` options for an endpoint. */
  connectOptions(servername: string | undefined): Record<string, unknown> {
    const { ca, cert, key } = this.files
    const options: Record<string, unknown> = { rejectUnauthorized: this.#config.verify }
    if (ca !== undefined) options.ca = ca
    if (cert !== undefined) options.cert = cert
    if (key !== undefined) options.key = key
    const name = this.#config.serverName ?? servername
    if (name !== undefined) options.servername = name
    return options
  }

  /** Stops watching the files. */
  close(): void {
    for (const watch of this.#watches) watch.close()
  }

  #reload(): void {
    const config = this.#config
    const files: TlsFiles = {
      ca: config.caFile === undefined ? undefined : readOptional(config.caFile),
      cert: config.certFile === undefined ? undefined : readOptional(config.certFile),
      key: config.keyFile === undefined ? undefined : readOptional(config.keyFile),
    }
    if (
      (config.caFile !== undefined && files.ca === undefined) ||
      (config.certFile !== undefined && files.cert === undefined) ||
      (config.keyFile !== undefined && files.key === undefined)
    )
      return
    const problem = tlsFilesProblem(files)
    if (problem !== undefined) {
      this.#logger.warn('TLS files changed but do not form a valid set yet; keeping the old ones', {
        service: this.#service,
        file: config[problem.option],
        error: problem.reason,
      })
      return
    }
    this.files = files
    this.#logger.info('TLS files reloaded', { service: this.#service })
    this.onChange?.()
  }
}

/** What is wrong with a set of TLS files: which file, what it should hold, and Node's reason. */
interface TlsFilesProblem {
  readonly option: 'caFile' | 'certFile' | 'keyFile'
  /** What the file should hold (`{service}` stands for the service's name). */
  readonly expected: string
  readonly reason: string
}

// Each file must hold what it is for (Node's TLS options skip what they cannot parse in a CA
// file, so a CA file of garbage would only show as failed connections), and the key must be
// the certificate's.
function tlsFilesProblem(files: TlsFiles): TlsFilesProblem | undefined {
  const contents = [
    ['caFile', files.ca, 'certificate'],
    ['certFile', files.cert, 'certificate'],
    ['keyFile', files.key, 'private key'],
  ] as const
  for (const [option, pem, content] of contents) {
    const reason = pem === undefined ? undefined : pemProblem(pem, content)
    if (reason !== undefined) return { option, expected: `a file holding a PEM ${content}`, reason }
  }
  try {
    createSecureContext({
      ...(files.ca === undefined ? {} : { ca: files.ca }),
      ...(files.cert === undefined ? {} : { cert: files.cert }),
      ...(files.key === undefined ? {} : { key: files.key }),
    })
    return undefined
  } catch (error) {
    return {
      option: 'keyFile',
      expected: 'the private key of services.{service}.tls.certFile',
      reason: (error as Error).message,
    }
  }
}
