import { isStorableText } from '../core/text.js'
import { redactSecrets } from '../observability/index.js'
import {
  type DeadEvent,
  inboxMigrations,
  listDead,
  OUTBOX_PARTITIONS,
  outboxMigrations,
  outboxStats,
  outboxTable,
  pruneInbox,
  pruneOutbox,
  redrive,
} from '../outbox/index.js'
import { listAppliedMigrations, type SqlDialect, type SqlDriver } from '../stores/index.js'
import { type DatabaseCommandDeps, runDatabaseCommand, type TextSink } from './database-command.js'
import { dedupeWindow, parseDuration } from './duration.js'
import { printable } from './printable.js'
import { acceptedDatabaseUrls, databaseUrl, databaseUrlEnvironmentHelp } from './process-support.js'
import { addSwitch, counted, redactedJson, refuseOptionFirst, UsageError } from './usage.js'

/** What `outboxCommand` needs besides its arguments; everything has a default. */
export type OutboxCommandDeps = DatabaseCommandDeps

const defaultUrl = 'sqlite:./.breakwater/breakwater.db'

const usage = `usage: breakwater outbox <command> [options] [--db <url>]

commands:
  dead [--json] [--limit <n>] [--after-id <id>]
                         list dead-lettered events, oldest first (each one holds back the
                         later events of its aggregate): at most --limit (default 100; a
                         line under the table says where the next page starts)
  redrive (--all | --id <event id> [--id <event id> ...])
                         send dead-lettered events again: the relay owning their partition
                         publishes them first in their aggregate, then the events behind them
  stats [--json]         pending, dead and stranded counts (stranded: pending with a
                         partition_no outside 0..63, which no relay ever publishes; not
                         events waiting for a relay that is down), and the lag (age of
                         the oldest pending event)
  prune [--older-than <duration>] [--archive] [--inbox-older-than <duration>]
        [--allow-short-inbox-window]
                         remove published events older than the duration (default 1d;
                         30d, 12h, 90m, 45s, 500ms), or move them to
                         breakwater_outbox_archive with --archive, and inbox records older
                         than --inbox-older-than (default 7d: keep it longer than any
                         redelivery, or a redelivered message is handled again; under 1h
                         is refused unless --allow-short-inbox-window is given). Pending
                         and dead-lettered events are never removed.

options:
  --db <url>  ${acceptedDatabaseUrls}
              (default ${defaultUrl})

${databaseUrlEnvironmentHelp}`

type Command = 'dead' | 'redrive' | 'stats' | 'prune'

interface Parsed {
  readonly command: Command
  readonly url: string
  readonly json: boolean
  readonly limit: number
  readonly afterId: number
  readonly all: boolean
  readonly ids: readonly string[]
  /** prune: milliseconds. */
  readonly olderThanMs: number
  readonly inboxOlderThanMs: number
  readonly archive: boolean
}

// The most events `outbox dead` shows: listDead's own cap.
const maxDeadLimit = 100_000

const allowed: Record<Command, readonly string[]> = {
  dead: ['--db', '--json', '--limit', '--after-id'],
  redrive: ['--db', '--all', '--id'],
  stats: ['--db', '--json'],
  prune: ['--db', '--older-than', '--archive', '--inbox-older-than', '--allow-short-inbox-window'],
}
const booleanFlags = new Set(['--json', '--all', '--archive', '--allow-short-inbox-window'])

function parse(args: readonly string[], env: Readonly<Record<string, string | undefined>>): Parsed {
  const [command, ...rest] = args
  if (command === undefined)
    throw new UsageError('a command is needed: dead, redrive, stats or prune')
  refuseOptionFirst(command, 'breakwater outbox dead|redrive|stats|prune [options]')
  // Own keys only: `in` also finds Object.prototype's members (constructor, toString).
  if (!Object.hasOwn(allowed, command))
    throw new UsageError(`unknown command "${redactSecrets(command)}"`)
  const cmd = command as Command
  const values = new Map<string, string>()
  const ids: string[] = []
  const flags = new Set<string>()
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument "${redactSecrets(arg)}"`)
    const eq = arg.indexOf('=')
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    if (!allowed[cmd].includes(flag))
      throw new UsageError(`unknown option "${redactSecrets(flag)}" for "outbox ${cmd}"`)
    if (booleanFlags.has(flag)) {
      addSwitch(flags, flag, eq)
      continue
    }
    let value: string | undefined
    if (eq >= 0) value = arg.slice(eq + 1)
    else {
      value = rest[i + 1]
      i++
    }
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--')))
      throw new UsageError(`${flag} needs a value`)
    if (flag === '--id') {
      // No event id holds one (the outbox refuses them); PostgreSQL answered a NUL with a bare
      // driver error. Only a caller of outboxCommand can pass one: argv has no NUL.
      if (!isStorableText(value))
        throw new UsageError(
          `--id must be an event id without NUL characters or lone surrogates, got ${JSON.stringify(value)}`,
        )
      ids.push(value)
      continue
    }
    if (values.has(flag)) throw new UsageError(`${flag} given twice`)
    values.set(flag, value)
  }
  const all = flags.has('--all')
  if (cmd === 'redrive') {
    if (all && ids.length > 0) throw new UsageError('give either --all or --id, not both')
    if (!all && ids.length === 0)
      throw new UsageError('outbox redrive needs --all or at least one --id <event id>')
  }
  const limitText = values.get('--limit')
  const limit = limitText === undefined ? 100 : Number(limitText)
  if (limitText !== undefined && (!/^\d+$/.test(limitText) || limit < 1 || limit > maxDeadLimit))
    throw new UsageError(`--limit must be an integer from 1 to ${maxDeadLimit}, got "${limitText}"`)
  const afterText = values.get('--after-id')
  const afterId = afterText === undefined ? 0 : Number(afterText)
  if (afterText !== undefined && (!/^\d+$/.test(afterText) || !Number.isSafeInteger(afterId)))
    throw new UsageError(
      `--after-id must be a row id (an integer from 0 to ${Number.MAX_SAFE_INTEGER}), got "${afterText}"`,
    )
  const inboxOlderThanMs = dedupeWindow({
    flag: '--inbox-older-than',
    text: values.get('--inbox-older-than'),
    fallback: '7d',
    allowFlag: '--allow-short-inbox-window',
    allowed: flags.has('--allow-short-inbox-window'),
    risk: 'the inbox records are the dedupe window, and a message redelivered after its record is removed is handled twice (0d removes them all)',
    outlast: 'any redelivery can take',
  })
  return {
    command: cmd,
    url: databaseUrl(values, env, defaultUrl),
    json: flags.has('--json'),
    limit,
    afterId,
    all,
    ids: [...new Set(ids)],
    olderThanMs: parseDuration('--older-than', values.get('--older-than') ?? '1d'),
    inboxOlderThanMs,
    archive: flags.has('--archive'),
  }
}

// Stranded events are only found by looking: say what they are and how to fix one. The rows
// are not changed for the operator, who alone knows whether the number or the row is wrong.
function strandedHint(stranded: number, dialect: SqlDialect): string {
  const last = OUTBOX_PARTITIONS - 1
  // SQLite keeps a fraction or text set into the INTEGER column as it is, and 5.5 lies between
  // 0 and 63: the listing must count what outboxStats counts as stranded.
  const outside =
    dialect === 'sqlite'
      ? `NOT (typeof(partition_no) = 'integer' AND partition_no BETWEEN 0 AND ${last})`
      : `partition_no NOT BETWEEN 0 AND ${last}`
  return `
${counted(stranded, 'pending event')} ${stranded === 1 ? 'has' : 'have'} a partition_no outside 0..${last}: no relay will ever publish ${stranded === 1 ? 'it' : 'them'}.
The outbox stores partitionOf(aggregate_id) (breakwater/outbox: FNV-1a of the id mod ${OUTBOX_PARTITIONS}); find them with
  SELECT id, aggregate_id, partition_no FROM ${outboxTable} WHERE published_at IS NULL AND dead_at IS NULL AND ${outside};
and set partition_no back to partitionOf(aggregate_id) of each; a relay then publishes them.
`
}

/**
 * `breakwater outbox dead|redrive|stats|prune --db <url>`: inspects dead-lettered outbox events
 * and sends them again, and removes old published events and inbox records. Resolves to the exit code: 0 on success, 2 for bad arguments, 1 when the
 * database fails or some `--id` was not a dead-lettered event.
 *
 * @example
 * ```ts
 * const code = await outboxCommand(['redrive', '--all', '--db', 'sqlite:./app.db'])
 * ```
 */
export function outboxCommand(args: string[], deps: OutboxCommandDeps = {}): Promise<number> {
  return runDatabaseCommand({ name: 'outbox', usage, parse, capabilities, execute }, args, deps)
}

// prune removes inbox records too (when the inbox is migrated).
function capabilities(parsed: Parsed) {
  return parsed.command === 'prune'
    ? { outbox: outboxMigrations, inbox: inboxMigrations }
    : { outbox: outboxMigrations }
}

async function execute(
  parsed: Parsed,
  db: SqlDriver,
  out: TextSink,
  err: TextSink,
): Promise<number> {
  switch (parsed.command) {
    case 'dead': {
      // One more than shown, to tell whether a next page has any: a hint given whenever
      // --limit rows came back led to an empty page when they were all. At listDead's cap
      // the one more cannot be read, and the hint stays (the next page may be empty).
      const read = await listDead(db, {
        limit: Math.min(parsed.limit + 1, maxDeadLimit),
        afterId: parsed.afterId,
      })
      const dead = read.slice(0, parsed.limit)
      if (parsed.json) {
        // As in the table: a last error (what the broker client threw) may quote a URL.
        out.write(`${redactedJson(dead.map(toJson))}\n`)
        return 0
      }
      if (dead.length === 0) {
        out.write('no dead-lettered events\n')
        return 0
      }
      out.write(table(dead))
      if (
        read.length > parsed.limit ||
        (parsed.limit === maxDeadLimit && read.length === parsed.limit)
      ) {
        out.write(`(first ${parsed.limit}; next page: --after-id ${dead[dead.length - 1]!.id})\n`)
      }
      return 0
    }
    case 'redrive': {
      const count = await redrive(db, parsed.all ? 'all' : parsed.ids)
      if (parsed.all) {
        out.write(`redrove ${counted(count, 'dead-lettered event')}\n`)
        return 0
      }
      out.write(`redrove ${count} of ${counted(parsed.ids.length, 'event')}\n`)
      if (count < parsed.ids.length) {
        const missed = parsed.ids.length - count
        err.write(
          `breakwater outbox: ${missed} of the given ids ${missed === 1 ? 'was not a dead-lettered event' : 'were not dead-lettered events'} (unknown, already published, or still being retried); see \`breakwater outbox dead\`\n`,
        )
        return 1
      }
      return 0
    }
    case 'stats': {
      const stats = await outboxStats(db)
      if (parsed.json) {
        out.write(`${JSON.stringify(stats)}\n`)
        return 0
      }
      out.write(
        `pending:  ${stats.pending}\ndead:     ${stats.dead}\nstranded: ${stats.stranded}\nlag:      ${(stats.lagMs / 1000).toFixed(3)} s\n`,
      )
      if (stats.stranded > 0) out.write(strandedHint(stats.stranded, db.dialect))
      return 0
    }
    case 'prune': {
      // A producer-only service migrates the outbox alone (migrateOutbox), a consumer-only one
      // the inbox alone (migrateInbox): a part whose table is missing has nothing to prune,
      // which is no failure of the other part's work (nor a reason to migrate tables the
      // service never uses). A database with neither is the wrong database.
      const applied = new Set((await listAppliedMigrations(db)).map((m) => m.capability))
      if (!applied.has('outbox') && !applied.has('inbox')) {
        err.write(
          `breakwater outbox: nothing to prune: neither the outbox nor the inbox capability is migrated in this database (is --db the right database?)\n`,
        )
        return 1
      }
      // A one-off run goes on until nothing that old is left. Each part reports as soon as it
      // is done, so a failure of the second still tells what the first removed.
      if (applied.has('outbox')) {
        const events = await pruneOutbox(db, {
          olderThanMs: parsed.olderThanMs,
          archive: parsed.archive,
          maxBatches: Number.MAX_SAFE_INTEGER,
        })
        out.write(
          `${parsed.archive ? 'archived' : 'removed'} ${counted(events, 'published event')}\n`,
        )
      } else {
        out.write(
          'no published events to remove: the outbox capability is not migrated in this database\n',
        )
      }
      if (!applied.has('inbox')) {
        out.write(
          'no inbox records to remove: the inbox capability is not migrated in this database\n',
        )
        return 0
      }
      const records = await pruneInbox(db, {
        olderThanMs: parsed.inboxOlderThanMs,
        maxBatches: Number.MAX_SAFE_INTEGER,
      })
      out.write(`removed ${counted(records, 'inbox record')}\n`)
      return 0
    }
  }
}

function toJson(event: DeadEvent): Record<string, unknown> {
  return {
    ...event,
    // Kept as null: JSON would drop an undefined key, hiding what the row lacks.
    attempts: event.attempts ?? null,
    createdAt: event.createdAt === undefined ? null : new Date(event.createdAt).toISOString(),
    deadAt: event.deadAt === undefined ? null : new Date(event.deadAt).toISOString(),
  }
}

// A value listDead could not read (a row changed outside breakwater: see its `unreadable`).
function cell(value: number | undefined, show: (value: number) => string): string {
  return value === undefined ? '(unreadable)' : show(value)
}

function table(events: readonly DeadEvent[]): string {
  // Stored text, accepted at enqueue with any control character in it: see printable.
  const rows = events.map((e) => [
    String(e.id),
    printable(e.eventId),
    printable(`${e.aggregateType}/${e.aggregateId}`),
    printable(e.type),
    printable(e.topic),
    cell(e.attempts, String),
    cell(e.deadAt, (ms) => new Date(ms).toISOString()),
    oneLine(e.lastError ?? ''),
  ])
  const header = [
    'ID',
    'EVENT ID',
    'AGGREGATE',
    'TYPE',
    'TOPIC',
    'ATTEMPTS',
    'DEAD AT',
    'LAST ERROR',
  ]
  const widths = header.map((h, i) =>
    i === header.length - 1 ? 0 : Math.max(h.length, ...rows.map((r) => r[i]!.length)),
  )
  const render = (cells: readonly string[]): string =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd()
  return `${[render(header), ...rows.map(render)].join('\n')}\n`
}

function oneLine(text: string): string {
  const flat = printable(redactSecrets(text).replace(/\s+/g, ' ').trim())
  return flat.length > 120 ? `${flat.slice(0, 119)}…` : flat
}
