import { BreakwaterError } from '../../core/errors.js'

/** One problem in a config file. */
export interface ConfigProblem {
  /**
   * Dotted path of the bad value (`services.payments.retry.attempts`, `listeners[1].port`), or
   * `line:column` for a YAML syntax error.
   */
  readonly path: string
  /** `expected ..., got ...` (secret values are never echoed). */
  readonly message: string
  /** 1-based line in the source, when known. */
  readonly line: number | undefined
  /** 1-based column in the source, when known. */
  readonly column: number | undefined
}

/**
 * A proxy config failed validation. The message lists every problem, one per line, as
 * `path: expected ..., got <value>`; `problems` holds them as data. Code `CONFIG_INVALID`.
 *
 * @example
 * ```ts
 * try { parseProxyConfig(text, 'proxy.yaml') }
 * catch (error) { if (error instanceof ConfigInvalidError) console.error(error.problems) }
 * ```
 */
export class ConfigInvalidError extends BreakwaterError {
  /** Name of the source (file path, or a label for inline text). */
  readonly source: string
  /** Every problem found, in document order. */
  readonly problems: readonly ConfigProblem[]

  constructor(source: string, problems: readonly ConfigProblem[]) {
    const count = problems.length === 1 ? '1 problem' : `${problems.length} problems`
    const lines = problems.map((p) => `  ${formatProblem(p)}`)
    super('CONFIG_INVALID', `invalid proxy config ${source} (${count}):\n${lines.join('\n')}`)
    this.source = source
    this.problems = problems
  }
}

/** At most this many characters of a value from the file are repeated in a problem. */
const maxEchoChars = 100

/**
 * `text` (a value, key or name from the file) as a problem repeats it: whole up to 100
 * characters, else its first 100, an ellipsis and its full length, so that a megabyte pasted
 * into one field does not make a megabyte message (printed by `--check`, logged by a refused
 * reload, returned by the admin API). `quote` writes it as a JSON string.
 */
export function echo(text: string, quote = false): string {
  if (text.length <= maxEchoChars) return quote ? JSON.stringify(text) : text
  let cut = text.slice(0, maxEchoChars)
  // Not half of a surrogate pair, which JSON.stringify would write as \ud83d.
  if (/[\uD800-\uDBFF]$/.test(cut)) cut = cut.slice(0, -1)
  return `${quote ? JSON.stringify(`${cut}…`) : `${cut}…`} (${text.length} characters)`
}

/** `path: message (line L, column C)`. */
export function formatProblem(problem: ConfigProblem): string {
  const where =
    problem.line === undefined || problem.path.startsWith(`${problem.line}:`)
      ? ''
      : ` (line ${problem.line}, column ${problem.column ?? 1})`
  return `${problem.path}: ${problem.message}${where}`
}

/** The codes of {@link ProxyStartError}. */
export type ProxyStartErrorCode =
  | 'PROXY_LISTEN_FAILED'
  | 'PROXY_TLS_INVALID'
  | 'PROXY_IDEMPOTENCY_STORE_FAILED'
  | 'PROXY_START_TIMEOUT'

/**
 * A valid config that cannot be brought up on this machine, as `startProxy` rejects with it:
 * `PROXY_LISTEN_FAILED` (a listener or the admin API could not bind: port in use, address not
 * available, permission denied; the errno is in `cause.code`), `PROXY_TLS_INVALID` (a
 * listener's or service's TLS files cannot be read or used), `PROXY_IDEMPOTENCY_STORE_FAILED`
 * (the `idempotency.url` store does not open), `PROXY_START_TIMEOUT` (the start took longer
 * than `startTimeoutMs`; `setting` names the step it was still waiting for, such as
 * `idempotency.url` on a database that does not answer). `setting` names the part of the file at fault;
 * the message is `setting...: <the underlying error's message>`, and `cause` holds that error.
 * Whatever the proxy had started is closed before it rejects. A reload that fails for these
 * reasons rejects with {@link ConfigInvalidError} instead, as every refused reload does.
 *
 * @example
 * ```ts
 * try { await startProxy({ config: { file: 'breakwater.yaml' } }) }
 * catch (error) {
 *   if (error instanceof ProxyStartError && error.code === 'PROXY_LISTEN_FAILED')
 *     console.error(`${error.setting} cannot bind: ${(error.cause as { code?: string }).code}`)
 * }
 * ```
 */
export class ProxyStartError extends BreakwaterError {
  /** The part of the config at fault: `listeners.<name>`, `admin`, `idempotency.url`, ... */
  readonly setting: string
  declare readonly code: ProxyStartErrorCode

  constructor(code: ProxyStartErrorCode, setting: string, message: string, cause: unknown) {
    super(code, message, { cause })
    this.setting = setting
  }
}

/**
 * The proxy was asked to reload after `close()` was called (or `close()` came while the reload
 * waited for the one before it): nothing was applied. Code `PROXY_CLOSED`.
 */
export class ProxyClosedError extends BreakwaterError {
  constructor(operation: string) {
    super('PROXY_CLOSED', `${operation}: the proxy is closed; nothing was applied`)
  }
}
