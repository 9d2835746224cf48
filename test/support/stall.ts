import type { SqlDriver, SqlTransaction } from '../../src/stores/index.js'
import { type Gate, gate } from './gate.js'

/**
 * A real driver whose statements can be held back, as when a process's connection hangs: while
 * stalled, every new statement waits, and runs once resumed. Everything else is the real
 * driver. The model tests use it to let a live process's leases run out; subclasses add their
 * own checks in {@link StallableDriver.passed}.
 */
export class StallableDriver implements SqlDriver {
  readonly dialect: SqlDriver['dialect']
  #stall: Gate | undefined

  constructor(readonly inner: SqlDriver) {
    this.dialect = inner.dialect
  }

  /** True while new statements wait. */
  get stalled(): boolean {
    return this.#stall !== undefined
  }

  /** From now on, statements wait (until {@link StallableDriver.resume}). */
  stall(): void {
    this.#stall ??= gate()
  }

  /** Lets the waiting statements, and later ones, through. */
  resume(): void {
    this.#stall?.open()
    this.#stall = undefined
  }

  async query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<R[]> {
    await this.passed()
    return this.inner.query<R>(sql, params)
  }

  async execute(sql: string, params?: readonly unknown[]): Promise<{ rowCount: number }> {
    await this.passed()
    return this.inner.execute(sql, params)
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    await this.passed()
    return this.inner.transaction(fn)
  }

  close(): Promise<void> {
    return this.inner.close()
  }

  /** Resolves once no stall is on (a stall that starts again meanwhile is waited out too). */
  protected async passed(): Promise<void> {
    while (this.#stall !== undefined) await this.#stall.promise
  }
}
