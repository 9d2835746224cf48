import { type Clock, storedTime } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkStoredName } from '../core/text.js'
import { checkFunction, checkObject, optionKeys } from '../core/validate.js'
import { type SqlDialect, type SqlDriver, type SqlExecutor, sqlErrorKind } from '../stores/index.js'
import { checkOptionKeys } from './checks.js'
import { ProjectionFailedError, ProjectionSetupError } from './errors.js'
import { cqrsStatements } from './sql.js'
import { readStoredPosition } from './stored-position.js'
import type { EventShape, RecordedEvent } from './types.js'

/** What a projection's `apply` receives besides the event. */
export interface ProjectionContext {
  /** The transaction to write the read model through (the append's, or the projector's). */
  readonly tx: SqlExecutor
  /** The database dialect, for the few statements that differ. */
  readonly dialect: SqlDialect
  /**
   * The physical name of one of the projection's tables. It is the logical name itself, except
   * while a rebuild fills a fresh copy; always write through it.
   */
  table(name: string): string
}

/**
 * Creates one read-model table. Receives the physical table name (use it for index names too,
 * e.g. `${table}_by_customer`, so a rebuild's fresh copy does not collide with the live one),
 * the dialect, and `tables`: the name to write in a `REFERENCES` clause for another of the
 * projection's tables (defined before this one), so that a rebuild's fresh copy references
 * the other's fresh copy, which the swap puts in place together with it. A `REFERENCES` that
 * writes a logical name out would bind the fresh copy to the live table the swap drops, and
 * the rebuild refuses it (`REBUILD_BLOCKED`). Returns the statements to run, in order.
 *
 * @example
 * ```ts
 * const lines: TableDefinition = (t, _dialect, tables) => [
 *   `CREATE TABLE ${t} (id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES ${tables('orders')} (id))`,
 * ]
 * ```
 */
export type TableDefinition = (
  table: string,
  dialect: SqlDialect,
  tables: (name: string) => string,
) => readonly string[]

/**
 * The members of the event union `E` a projection reading the types `T` can be handed: those
 * whose `type` may be one of `T`. For members with a literal `type` this is
 * `Extract<E, { type: T }>`; a member whose `type` is wider (`string`, as in `EventShape`) may
 * carry one of `T` too, so it is kept where `Extract` would drop it.
 */
export type EventOfTypes<E extends EventShape, T extends string> = E extends EventShape
  ? [E['type'] & T] extends [never]
    ? never
    : E
  : never

/** The fields of a projection that do not depend on the types it reads. */
interface ProjectionFields {
  /** A unique name (`[a-z][a-z0-9_-]*`, at most 2048 characters): the key of its checkpoint. */
  readonly name: string
  /**
   * Its tables: logical name (an SQL identifier, `[a-z_][a-z0-9_]*`, at most 40 characters;
   * not starting with `breakwater_` nor ending with `__old` or `__r<n>`, which the event store
   * and rebuilds use) to definition.
   */
  readonly tables: Readonly<Record<string, TableDefinition>>
}

/**
 * A projection: folds events into SQL read-model tables. The same definition runs inline (in
 * the append's transaction, see `EventStoreOptions.inlineProjections`) or asynchronously (a
 * projector, see `createProjector`), and can be rebuilt from position 0.
 *
 * `apply` must only write through `context.tx` and `context.table(...)`, and must be
 * deterministic in the event (a rebuild must reach the same tables).
 *
 * `E` is the union of the events it may read (see `Event`); `T`, the types it reads, when it
 * reads only some (its `eventTypes`): `apply` is then handed only the members of `E` of those
 * types, and `eventTypes` is required (without it the projection would be handed every event,
 * not only those of `T`). TypeScript infers no type argument once one is given, so `T` is
 * written out beside `E`: `defineProjection<OrderEvent, 'order-placed' | 'order-shipped'>`.
 *
 * @example
 * ```ts
 * const orderHistory = defineProjection<OrderEvent, 'order-placed'>({
 *   name: 'order-history',
 *   eventTypes: ['order-placed'],
 *   tables: {
 *     order_history: (t) => [
 *       `CREATE TABLE ${t} (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total INTEGER NOT NULL)`,
 *     ],
 *   },
 *   async apply(event, { tx, table }) {
 *     // event: RecordedEvent<Extract<OrderEvent, { type: 'order-placed' }>>
 *     await tx.execute(`INSERT INTO ${table('order_history')} VALUES ($1, 'placed', $2)`, [
 *       event.stream, event.data.total,
 *     ])
 *   },
 * })
 * ```
 */
export type ProjectionDefinition<
  E extends EventShape = EventShape,
  // `never`, the default, stands for "T not given": the projection is typed by E alone. A
  // default of E['type'] would make the test below depend on E, and a projection typed by a
  // type parameter E (a generic helper's) would stay unresolved, leaving apply untyped.
  T extends E['type'] = never,
> = ProjectionFields &
  // T not given: eventTypes may be left out (a catch-all) and apply is handed E, as before T
  // existed (and E is still inferred from apply's parameter through this branch).
  ([T] extends [never]
    ? {
        /**
         * The event types it reads; others are skipped (but still advance its checkpoint) and
         * a projector does not upcast them, so an upcaster failing on them does not stop it.
         * Without it the projection is a catch-all: every event is upcast and handed to
         * `apply`. With a typed projection (`defineProjection<OrderEvent>`) only the types of
         * `E` compile. Each is a type an event can have (a non-empty string without NUL
         * characters or lone surrogates, as `append` requires); any other is refused.
         * @default every type
         */
        readonly eventTypes?: readonly E['type'][] | undefined
        /**
         * Applies one event to the read model. Typed by `E`, `switch (event.type)` narrows
         * `event.data`; like a store's type parameter it is not checked against the log (a
         * catch-all projection is handed every event the log holds).
         */
        apply(event: RecordedEvent<E>, context: ProjectionContext): Promise<void> | void
      }
    : {
        /**
         * The event types it reads, all of them types of `T`: only their events are handed
         * to `apply`. Others are skipped (but still advance its checkpoint) and a projector
         * does not upcast them. Required: without it the projection would be handed every
         * event, of types outside `T` too.
         */
        // NoInfer: T is the application's word, never taken from what the list holds.
        readonly eventTypes: readonly NoInfer<T>[]
        /**
         * Applies one event of the types `T` to the read model: it is handed only the members
         * of `E` of those types (see {@link EventOfTypes}), and `switch (event.type)` narrows
         * `event.data` among them. Not checked against the log, as a store's type is not.
         */
        apply(
          event: RecordedEvent<EventOfTypes<E, T>>,
          context: ProjectionContext,
        ): Promise<void> | void
      })

const namePattern = /^[a-z][a-z0-9_-]*$/
// The longest checkpoint name (maxKeyBytes in event-store.ts; not imported from there, which
// imports this module, to keep the modules free of a cycle).
const maxKeyBytes = 2048
const tablePattern = /^[a-z_][a-z0-9_]{0,39}$/
const reservedTable = /^breakwater_|__(?:old|r\d+)$/

const projectionFields = optionKeys<ProjectionDefinition>({
  name: true,
  tables: true,
  eventTypes: true,
  apply: true,
})

/** @internal Validates a projection definition; `at` names it in errors. */
export function validateProjection(at: string, projection: unknown): ProjectionDefinition {
  const p = checkObject(at, projection)
  // A misspelt field (`eventType`) was dropped: the projection was handed every event type.
  checkOptionKeys(at, p, projectionFields)
  // The name keys its row in breakwater_projections: capped like checkpoint names (ASCII, so
  // characters are bytes), or PostgreSQL would refuse the registration with a bare index error.
  if (typeof p.name !== 'string' || !namePattern.test(p.name) || p.name.length > maxKeyBytes) {
    throw new InvalidOptionError(
      `${at}.name`,
      `a name matching [a-z][a-z0-9_-]* of at most ${maxKeyBytes} characters`,
      p.name,
    )
  }
  const tables = checkObject(`${at}.tables`, p.tables)
  for (const [table, definition] of Object.entries(tables)) {
    if (!tablePattern.test(table)) {
      throw new InvalidOptionError(
        `${at}.tables`,
        'table names matching [a-z_][a-z0-9_]* (at most 40 characters)',
        table,
      )
    }
    // A rebuild renames the live table to `<table>__old` and drops it, and fills
    // `<table>__r<n>`: a table named after the event store's own (breakwater_events) would be
    // dropped with the log in it, and one named like a rebuild's copy of another table would
    // be dropped or overwritten by that table's rebuild.
    if (reservedTable.test(table)) {
      throw new InvalidOptionError(
        `${at}.tables`,
        'table names that do not start with breakwater_ nor end with __old or __r<n> (reserved)',
        table,
      )
    }
    checkFunction(`${at}.tables.${table}`, definition)
  }
  if (
    p.eventTypes !== undefined &&
    (!Array.isArray(p.eventTypes) || p.eventTypes.some((t) => typeof t !== 'string'))
  ) {
    throw new InvalidOptionError(`${at}.eventTypes`, 'an array of strings', p.eventTypes)
  }
  // Checked as an append checks an event's type: a type no event can have ('', NUL, a lone
  // surrogate, a hole) would hand the projection nothing while its checkpoint ran past every
  // event of the type meant.
  const types: readonly unknown[] = p.eventTypes ?? []
  for (let i = 0; i < types.length; i++) checkStoredName(`${at}.eventTypes[${i}]`, types[i])
  checkFunction(`${at}.apply`, p.apply)
  return projection as ProjectionDefinition
}

/**
 * Declares a projection (validated now, so a mistake fails at startup, an unknown (misspelt)
 * field with `InvalidOptionError` (`INVALID_OPTION`) too). See {@link ProjectionDefinition}.
 */
export function defineProjection<E extends EventShape = EventShape, T extends E['type'] = never>(
  definition: ProjectionDefinition<E, T>,
): ProjectionDefinition<E, T> {
  validateProjection('projection', definition)
  return definition
}

/** @internal The physical name of a table in a generation (0: the live, logical name). */
export function physicalTable(table: string, generation: number): string {
  return generation === 0 ? table : `${table}__r${generation}`
}

/** The physical name of the projection's table `name` in `generation`, refusing other names. */
function tableOf(projection: ProjectionDefinition, name: string, generation: number): string {
  if (!Object.hasOwn(projection.tables, name)) {
    throw new InvalidOptionError(
      `${projection.name}: table`,
      `one of ${Object.keys(projection.tables).join(', ')}`,
      name,
    )
  }
  return physicalTable(name, generation)
}

/** @internal A context whose tables resolve to `generation`'s names. */
export function projectionContext(
  tx: SqlExecutor,
  projection: ProjectionDefinition,
  generation: number,
): ProjectionContext {
  return {
    tx,
    dialect: tx.dialect,
    table: (name: string): string => tableOf(projection, name, generation),
  }
}

/**
 * @internal Whether a foreign key stays with the table it references when that table is
 * renamed. PostgreSQL binds it to the table; SQLite names the table, and its rename rewrites the
 * names in other tables' keys only while `foreign_keys` is on (legacy_alter_table, which the
 * swap uses for views, leaves them alone otherwise). With keys that do not follow, a key written
 * with a table's logical name is the one that names the rebuilt table after the swap.
 */
export async function foreignKeysFollowRenames(tx: SqlExecutor): Promise<boolean> {
  if (tx.dialect === 'postgres') return true
  const rows = await tx.query<{ foreign_keys: number | bigint }>('PRAGMA foreign_keys')
  return Number(rows[0]?.foreign_keys ?? 0) === 1
}

/**
 * @internal Runs the table definitions of `generation`. `failed`, if given, turns a statement's
 * error into the one thrown, knowing the table it was creating.
 */
export async function createTables(
  tx: SqlExecutor,
  projection: ProjectionDefinition,
  generation: number,
  failed?: (table: string, error: unknown) => unknown,
): Promise<void> {
  // The name a REFERENCES clause gives another of the projection's tables: its copy in this
  // generation, unless keys do not follow renames (SQLite with foreign_keys off), where only the
  // logical name still names the right table once the swap has renamed the copies into place.
  const referenced = generation > 0 && (await foreignKeysFollowRenames(tx)) ? generation : 0
  const tables = (name: string): string => tableOf(projection, name, referenced)
  for (const [table, definition] of Object.entries(projection.tables)) {
    for (const statement of definition(physicalTable(table, generation), tx.dialect, tables)) {
      try {
        await tx.execute(statement)
      } catch (error) {
        throw failed === undefined ? error : failed(table, error)
      }
    }
  }
}

/**
 * The error of a projection's first run whose table could not be created: the driver's names
 * neither the projection nor the table. Errors callers classify and retry on pass as they are.
 */
function firstRunFailure(projection: string, table: string, error: unknown): unknown {
  if (sqlErrorKind(error) !== 'other') return error
  return new ProjectionSetupError(projection, table, error)
}

/**
 * @internal Registers each projection and creates its tables, once: the registration row is
 * inserted with ON CONFLICT DO NOTHING in the same transaction as the CREATE TABLEs, so
 * concurrent processes do not race on the DDL (the loser waits for the winner's row, then
 * skips).
 *
 * An `inline` projection records the last position taken at its registration: it is applied
 * by the appends that follow (every position they take is above it), never to the events
 * already in the log, so until a rebuild its tables lack them (see `Projector.position`).
 * They are not filled here: that would apply the whole log in one transaction, in the path of
 * the first append, holding SQLite's write lock throughout; `rebuild()` does it in batches
 * without blocking appends.
 */
export async function ensureProjections(
  target: SqlDriver | SqlExecutor,
  projections: readonly ProjectionDefinition[],
  clock: Clock,
  inline: boolean,
): Promise<void> {
  const run = async (tx: SqlExecutor): Promise<void> => {
    const statements = cqrsStatements[tx.dialect]
    // The last position taken, as the events up to it may be missing; null when there is none.
    const lastTaken = async (): Promise<number | null> => {
      const rows = await tx.query<{ position: number | string }>(statements.lastTaken)
      const last = Number(rows[0]?.position ?? 0)
      return last > 0 ? last : null
    }
    for (const projection of projections) {
      const missingThrough = inline ? await lastTaken() : null
      const mode = inline ? 1 : 0
      const inserted = await tx.execute(statements.insertProjection, [
        projection.name,
        storedTime(clock),
        missingThrough,
        mode,
      ])
      if (inserted.rowCount > 0) {
        await createTables(tx, projection, 0, (table, error) =>
          firstRunFailure(projection.name, table, error),
        )
        continue
      }
      // Registered before: by this mode, the other one, or before modes were recorded (NULL).
      // Locked (PostgreSQL) so that a projector's batch in progress commits its checkpoint first.
      const rows = await tx.query<{
        position: number | string
        inline: number | string | null
        missing_through: number | string | null
      }>(statements.projectionForUpdate, [projection.name])
      const row = rows[0]
      if (row === undefined || (row.inline !== null && Number(row.inline) === mode)) continue
      // Async only refuses to run a projection last registered inline (see the projector) until
      // a rebuild: an inline one's stored position is where its last rebuild ended, not what
      // its tables hold. Inline after async: the tables hold what the projector applied, up to
      // its checkpoint; events taken after it are missing until a rebuild.
      if (!inline && row.inline !== null) continue
      // A position that cannot be read (a row changed outside breakwater) is taken as nothing
      // applied: the inline projection then reports what it may lack until a rebuild, which
      // stores a position in its place. Refusing it would stop every append of the store. An
      // unreadable missing_through likewise as lacking every event taken so far (Number() wrote
      // text back as NULL, and kept a negative number: either reported complete).
      const stored = row.missing_through === null ? null : readStoredPosition(row.missing_through)
      let missing = stored === undefined ? await lastTaken() : stored
      const applied = readStoredPosition(row.position) ?? -1
      if (inline && row.inline !== null && (missingThrough ?? 0) > applied) {
        missing = missingThrough
      }
      await tx.execute(statements.setProjectionMode, [
        projection.name,
        mode,
        missing,
        storedTime(clock),
      ])
    }
  }
  if ('transaction' in target && typeof target.transaction === 'function') {
    await (target as SqlDriver).transaction(run)
  } else {
    await run(target)
  }
}

/** @internal Whether `projection` reads events of this type. */
export function handles(projection: ProjectionDefinition, type: string): boolean {
  return projection.eventTypes === undefined || projection.eventTypes.includes(type)
}

/**
 * @internal Applies inline projections to freshly appended events in the append's tx. A
 * failure of `apply` is thrown as a {@link ProjectionFailedError} naming the projection and
 * the event (position 0: the append fails, so the event is never in the log): the bare error
 * named neither, and a unique violation of the projection's table read (`sqlErrorKind`) as the
 * append's own. A busy database or a serialization failure passes as it is: it is the
 * transaction's, which a command handler retries as a whole.
 */
export async function applyInline(
  tx: SqlExecutor,
  projections: readonly ProjectionDefinition[],
  events: readonly RecordedEvent[],
): Promise<void> {
  for (const projection of projections) {
    const context = projectionContext(tx, projection, 0)
    for (const event of events) {
      if (!handles(projection, event.type)) continue
      try {
        await projection.apply(event, context)
      } catch (error) {
        const kind = sqlErrorKind(error)
        if (kind === 'busy' || kind === 'serialization-failure') throw error
        throw new ProjectionFailedError(
          projection.name,
          { ...event, position: 0 },
          error,
          false,
          true,
        )
      }
    }
  }
}
