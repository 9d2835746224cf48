// Runs the charge server as a child process through a planned sequence of lives: each life
// either kills itself at a named crash point, is SIGKILLed by the test after a random delay, or
// (after the plan) runs until stopped. A dead child is replaced at once, on a new port; clients
// ask for the current one.
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { compiledFixture } from '../../support/compiled-fixture.js'

// Bundled once (compiledFixture), not run through tsx: a run starts a server per life.
const chargeServer = await compiledFixture(
  fileURLToPath(new URL('./charge-server.ts', import.meta.url)),
)

/** How one life of the server ends. */
export interface LifePlan {
  /** A crash point the child kills itself at (`BREAKWATER_CRASH_AT`). */
  readonly crashAt?: string
  /** On which visit of `crashAt` it dies (`BREAKWATER_CRASH_AFTER`). */
  readonly crashAfter?: number
  /** The test SIGKILLs the child this long after it is ready. */
  readonly killAfterMs?: number
}

/** What happened to one life. */
export interface LifeRecord {
  readonly generation: number
  readonly plan: LifePlan
  /** The crash point the child reported just before killing itself. */
  readonly crashedAt: string | undefined
  /** Whether the test's timer killed it. */
  readonly killedByTest: boolean
  readonly signal: NodeJS.Signals | null
  readonly code: number | null
}

/** A live child a client can send requests to. */
export interface Target {
  readonly url: string
  readonly generation: number
}

interface Live extends Target {
  readonly exited: Promise<void>
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** The charge server under a crash plan. */
export class CrashingServer {
  readonly lives: LifeRecord[] = []
  readonly #env: Record<string, string>
  readonly #plans: readonly LifePlan[]
  #current: Live | undefined
  #child: ChildProcess | undefined
  #waiters: Array<{ resolve(target: Target): void; reject(error: Error): void }> = []
  #stopping = false
  #failure: Error | undefined
  #loop: Promise<void> | undefined
  #stderr: string[] = []

  /** `env` is passed to every child (CRASH_DB_URL, BREAKWATER_BROKEN, ...). */
  constructor(env: Record<string, string>, plans: readonly LifePlan[]) {
    this.#env = env
    this.#plans = plans
  }

  /** Starts the first life; resolves when it listens. */
  async start(): Promise<void> {
    this.#loop = this.#run().catch((error: unknown) => {
      this.#failure = error instanceof Error ? error : new Error(String(error))
      for (const waiter of this.#waiters.splice(0)) waiter.reject(this.#failure)
    })
    await this.ready()
  }

  /** The last lines the children wrote to stderr (for failure messages). */
  get stderrTail(): string {
    return this.#stderr.slice(-20).join('\n')
  }

  /** The live child, or the next one once it listens. */
  ready(): Promise<Target> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure)
    if (this.#current !== undefined) return Promise.resolve(this.#current)
    if (this.#stopping) return Promise.reject(new Error('the server was stopped'))
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }))
  }

  /**
   * Where to retry after a request to `generation` failed on the connection: the next child if
   * that one died (its exit is seen within moments of the client's error), else the same one.
   */
  async afterFailure(generation: number): Promise<Target> {
    const current = this.#current
    if (current !== undefined && current.generation === generation) {
      const died = await Promise.race([
        current.exited.then(() => true),
        delay(250).then(() => false),
      ])
      if (!died) return current
    }
    return this.ready()
  }

  /** Ends the plan: kills the live child and starts no other. */
  async stop(): Promise<void> {
    this.#stopping = true
    this.#child?.kill('SIGKILL')
    await this.#loop
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new Error('the server was stopped'))
    }
    if (this.#failure !== undefined) throw this.#failure
  }

  async #run(): Promise<void> {
    for (let life = 0; !this.#stopping; life++) {
      const plan = this.#plans[life] ?? {}
      const generation = life + 1
      const env: Record<string, string> = { ...this.#env }
      if (plan.crashAt !== undefined) {
        env.BREAKWATER_CRASH_AT = plan.crashAt
        env.BREAKWATER_CRASH_AFTER = String(plan.crashAfter ?? 1)
      }
      const child = spawn(process.execPath, [chargeServer, '0'], {
        env: { ...process.env, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      this.#child = child
      const exited = new Promise<void>((resolve) =>
        child.once('exit', () => {
          // Before anyone awaiting the exit asks for a target: never hand out a dead child.
          if (this.#current?.generation === generation) this.#current = undefined
          resolve()
        }),
      )
      // 'close' comes after the pipes are drained: the crash point's last line has been read.
      const closed = new Promise<void>((resolve) => child.once('close', () => resolve()))
      createInterface({ input: child.stderr! }).on('line', (line) => {
        this.#stderr.push(`[gen ${generation}] ${line}`)
        if (this.#stderr.length > 200) this.#stderr.shift()
      })
      let crashedAt: string | undefined
      let resolvePort!: (port: number) => void
      const port = new Promise<number>((resolve) => {
        resolvePort = resolve
      })
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line.startsWith('listening ')) resolvePort(Number(line.slice('listening '.length)))
        if (line.startsWith('crash ')) crashedAt = line.slice('crash '.length)
      })
      const listening = await Promise.race([port, exited.then(() => undefined)])
      if (listening === undefined && !this.#stopping) {
        throw new Error(
          `charge server (generation ${generation}) exited before listening:\n${this.stderrTail}`,
        )
      }
      let killedByTest = false
      let timer: NodeJS.Timeout | undefined
      if (listening !== undefined) {
        this.#current = { url: `http://127.0.0.1:${listening}`, generation, exited }
        for (const waiter of this.#waiters.splice(0)) waiter.resolve(this.#current)
        if (plan.killAfterMs !== undefined) {
          timer = setTimeout(() => {
            killedByTest = true
            child.kill('SIGKILL')
          }, plan.killAfterMs)
        }
      }
      await closed
      clearTimeout(timer)
      this.lives.push({
        generation,
        plan,
        crashedAt,
        killedByTest,
        signal: child.signalCode,
        code: child.exitCode,
      })
      if (child.exitCode !== null && child.exitCode !== 0) {
        throw new Error(
          `charge server (generation ${generation}) failed with exit code ${child.exitCode}:\n${this.stderrTail}`,
        )
      }
    }
  }
}
