// What every CLI command shares for reporting: the error a parser throws for bad arguments,
// the text of anything thrown, counts in sentences, and JSON output with secrets masked.

import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { redactSecrets } from '../observability/redact.js'
import { redactUrl } from '../stores/redact.js'
import { printable } from './printable.js'

/** Thrown by a command's parser for bad arguments: reported with the usage, exit code 2. */
export class UsageError extends Error {}

/**
 * `message` as one line of stderr: its secrets masked, then its control characters and line
 * separators escaped (`\r`, `\n`, `\u001b`). A message quotes the argument at fault, and an
 * argument may hold one: a URL read from a CRLF file ends in `\r`, which sent the rest of the
 * line over its start, and a `\n` split it in two.
 */
export function oneLine(message: string): string {
  return printable(redactSecrets(message))
}

/**
 * Refuses an option given where a command's first word, its command, belongs: `breakwater saga
 * --db <url> list` was answered 'unknown command "--db"', as if a command of that name had been
 * mistyped. `form` is how the command line goes (`breakwater saga list|show [options]`); an
 * option given as `--db=<url>` is named by its flag alone, keeping the value out of the message.
 */
export function refuseOptionFirst(first: string, form: string): void {
  if (first.startsWith('--'))
    throw new UsageError(
      `the command comes before its options (${form}), got the option "${first.split('=')[0]}" first`,
    )
}

/**
 * A database or broker URL as every command's messages quote it: its password (and a
 * `password=` query parameter) hidden even when the URL does not parse (the stores' redactUrl,
 * which reads the whole string as one URL, so it also finds a password holding a line break
 * or a `://` in its middle, where text masking, which must tell a URL's end in prose, stops;
 * one ending in a line break, `pw\r@db`, text masking finds too), then a user name alone
 * hidden too (redactSecrets: it may be a
 * token, as NATS and Redis take one): `postgres://***@db/app`. migrate quoted
 * `postgres://app@db/app` where the others said `postgres://***@db/app`. Not made one line:
 * a JSON log escapes it itself, and a line of stderr goes through {@link printable}.
 */
export function maskedUrl(url: string): string {
  return redactSecrets(redactUrl(url))
}

/**
 * An error's message, or the thrown value as text. An AggregateError (a connect that failed on
 * every address of a host) gives its errors' messages joined: its own message is often empty.
 */
export function messageOf(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0)
    return error.errors.map(messageOf).join('; ')
  return error instanceof Error ? error.message : String(error)
}

/** `1 event`, `2 events`: a count and its noun, plural unless the count is 1. */
export function counted(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`
}

/**
 * Whether `args` ask for a command's usage: `--help` or `-h` anywhere (`outbox stats --help`,
 * `relay --db x --help`), or `help` as the first word.
 */
export function wantsHelp(args: readonly string[]): boolean {
  return args[0] === 'help' || args.includes('--help') || args.includes('-h')
}

/**
 * Records the switch `flag` (a flag without a value) in `flags`. `eq` is the index of `=` in
 * the argument (-1 when none): `--json=1` is refused, and so is a switch given twice.
 */
export function addSwitch(flags: Set<string>, flag: string, eq: number): void {
  if (eq >= 0) throw new UsageError(`${flag} takes no value`)
  if (flags.has(flag)) throw new UsageError(`${flag} given twice`)
  flags.add(flag)
}

/**
 * `value` as indented JSON, every string in it with its secrets masked. Each string is masked
 * before it is quoted, not the JSON text after: a mask that runs to the end of a secret
 * (`password=...`, `Bearer ...`) would take the closing quote with it, and the output would no
 * longer parse.
 */
export function redactedJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, item: unknown) => (typeof item === 'string' ? redactSecrets(item) : item),
    2,
  )
}

/**
 * The version of the breakwater that runs: the `version` of the nearest package.json named
 * `breakwater` in a folder above `from` (this module), read at run time.
 */
export function packageVersion(from: string = import.meta.url): string {
  // Walked up rather than a fixed `../../package.json`: the module sits at dist/cli/ in the
  // package, but a bundle of the CLI (the tests run one) lives elsewhere in the project.
  let folder = dirname(fileURLToPath(from))
  for (;;) {
    const found = packageAt(folder)
    if (found?.name === 'breakwater' && typeof found.version === 'string') return found.version
    const parent = dirname(folder)
    if (parent === folder) throw new Error(`no package.json of breakwater above ${from}`)
    folder = parent
  }
}

/** The package.json in `folder`, or undefined when there is none (or it does not parse). */
function packageAt(folder: string): { name?: unknown; version?: unknown } | undefined {
  try {
    return JSON.parse(readFileSync(join(folder, 'package.json'), 'utf8')) as {
      name?: unknown
      version?: unknown
    }
  } catch {
    return undefined
  }
}
