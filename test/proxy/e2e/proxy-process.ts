// Runs the real `breakwater proxy` command as the package ships it: node dist/cli/main.js.
// The build is refreshed first when a source file is newer than it (tsc emits even while
// other parts of the tree have type errors; the build's own exit code is not ours to judge).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('../../../', import.meta.url))
const mainJs = join(root, 'dist/cli/main.js')

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(path))
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs)
  }
  return newest
}

/** Builds dist/ when it is missing or older than any source file. */
export function ensureBuilt(): void {
  const sources = newestMtime(join(root, 'src'))
  const built = [mainJs, join(root, 'dist/proxy/runtime.js'), join(root, 'dist/cli/proxy.js')]
  if (built.every((file) => existsSync(file) && statSync(file).mtimeMs >= sources)) return
  try {
    execFileSync(
      process.execPath,
      [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
      {
        cwd: root,
        stdio: 'pipe',
      },
    )
  } catch {
    // Type errors elsewhere in the tree still emit; the check below is what matters.
  }
  for (const file of built)
    if (!existsSync(file)) throw new Error(`npm run build did not produce ${file}`)
}

/** A free TCP port on 127.0.0.1 (bound and released; the proxy binds it right after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

/** A running `breakwater proxy` process. */
export interface ProxyProcess {
  readonly child: ChildProcess
  /** JSON log lines so far. */
  readonly lines: Record<string, unknown>[]
  stdout(): string
  stderr(): string
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  waitForLine(
    match: (line: Record<string, unknown>) => boolean,
    what: string,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>
  kill(): void
}

const running = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/** Starts `breakwater ...args` from dist/ with `env` added. */
export function spawnProxy(
  args: readonly string[],
  env: Record<string, string> = {},
): ProxyProcess {
  const child = spawn(process.execPath, [mainJs, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  const lines: Record<string, unknown>[] = []
  let out = ''
  let err = ''
  let pending = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
    pending += chunk
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>)
    }
  })
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      running.delete(child)
      resolve({ code, signal })
    }),
  )
  const describe = (): string => `\nstdout:\n${out.slice(-4000)}\nstderr:\n${err.slice(-4000)}`
  return {
    child,
    lines,
    stdout: () => out,
    stderr: () => err,
    exited,
    async waitForLine(match, what, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const found = lines.find(match)
        if (found !== undefined) return found
        if (child.exitCode !== null || child.signalCode !== null)
          throw new Error(`the proxy exited before ${what}${describe()}`)
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${describe()}`)
        await new Promise((resolve) => setTimeout(resolve, 25))
      }
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    },
  }
}

/** Runs `breakwater ...args` to the end. */
export async function runProxyCli(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cli = spawnProxy(args, env)
  const { code } = await cli.exited
  return { code, stdout: cli.stdout(), stderr: cli.stderr() }
}
