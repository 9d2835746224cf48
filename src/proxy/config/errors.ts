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
 * A proxy config failed validation. The message lists the problems, one per line, as
 * `path: expected ..., got <value>`: the first 50, then `... and N more problems` when there
 * are more, so a file with thousands of them does not make a message of hundreds of KB
 * (printed by `--check`, logged by a refused reload, returned by the admin API). `problems`
 * holds the same list as data; `problemCount` is how many were found. Code `CONFIG_INVALID`.
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
  /**
   * The first 50 problems found, in document order; when there were more, a last one with
   * path `(more)` and message `... and N more problems` stands for the rest (so the admin API
   * and the logs, which list these, say so too).
   */
  readonly problems: readonly ConfigProblem[]
  /** How many problems were found in all (those listed and those left out). */
  readonly problemCount: number

  /**
   * @param problems every problem found; a list this class made (ending with its `(more)`
   *   problem, as a worker sends it to the primary) is taken as it is, count and all.
   */
  constructor(source: string, problems: readonly ConfigProblem[]) {
    const { listed, more } = capped(problems)
    const count = listed.length + more
    const lines = listed.map((p) => `  ${formatProblem(p)}`)
    if (more > 0) lines.push(`  ${moreProblems(more)}`)
    super(
      'CONFIG_INVALID',
      `invalid proxy config ${source} (${plural(count, 'problem')}):\n${lines.join('\n')}`,
    )
    this.source = source
    this.problemCount = count
    this.problems =
      more > 0
        ? [
            ...listed,
            { path: morePath, message: moreProblems(more), line: undefined, column: undefined },
          ]
        : listed
  }
}

/** At most this many problems are listed (in a message, or by `--check`). */
const maxListedProblems = 50

// The path of the problem that stands for those left out: no key is formatted so (formatPath
// writes a key "(more)" as ["(more)"]).
const morePath = '(more)'

/**
 * The first 50 of `items` and how many more there are: the one cap on a list of problems, so
 * each place that prints one (the loader's message, `--check`'s unusable files) stays short.
 * A trailing `(more)` problem (a list {@link ConfigInvalidError} made) counts as what it says.
 */
export function capped<T>(items: readonly T[]): { listed: T[]; more: number } {
  const last = items[items.length - 1] as Partial<ConfigProblem> | undefined
  const folded =
    last?.path === morePath ? /^\.\.\. and (\d+) more problems?$/.exec(last.message ?? '') : null
  const all = folded === null ? items : items.slice(0, -1)
  const listed = all.slice(0, maxListedProblems)
  return { listed, more: all.length - listed.length + Number(folded?.[1] ?? 0) }
}

/** The line that stands for `count` problems left out of a list. */
export function moreProblems(count: number): string {
  return `... and ${plural(count, 'more problem')}`
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`
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
