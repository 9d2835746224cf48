// What a user gets from `npm pack`: the tarball of the package built from the current sources,
// extracted into the node_modules of a throwaway application next to the
// package's runtime dependencies and nothing else. Those are symlinked from the repository's
// node_modules (offline, and the same versions the suite tests), so no optional peer (pg,
// better-sqlite3, nats, amqplib, ioredis, express, fastify, hono) can be found from it: the
// repository's node_modules is not an ancestor of the temporary folder.
import { spawnSync } from 'node:child_process'
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository's root folder (where package.json is). */
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url))

/** The fields of package.json these tests read. */
export interface PackageJson {
  readonly name: string
  readonly license: string
  readonly exports: Record<string, unknown>
  readonly bin: Record<string, string>
  readonly scripts: Record<string, string>
  readonly dependencies: Record<string, string>
  readonly peerDependencies: Record<string, string>
}

/** The repository's package.json. */
export const packageJson = JSON.parse(
  readFileSync(join(repoRoot, 'package.json'), 'utf8'),
) as PackageJson

/** How a child process ended. */
export interface NodeRun {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

/** The packed package installed in a temporary application. */
export interface PackedApp {
  /** The application folder: the working directory of every child process. */
  readonly dir: string
  /** The installed package's folder, `<dir>/node_modules/<name>`. */
  readonly packageDir: string
  /** The paths the tarball holds, relative to the package's root (as `npm pack` lists them). */
  readonly files: readonly string[]
  /** Runs `node <args>` in the application folder. */
  node(args: readonly string[]): NodeRun
  /**
   * Runs `source` as an ES module in the application folder (so its bare imports resolve as the
   * application's would) and returns what it printed last, parsed as JSON. Throws with the
   * child's stderr when it fails.
   */
  script<T>(name: string, source: string): T
  /** Deletes the temporary folder (the symlinks, not what they point to). */
  remove(): void
}

/**
 * Builds the package into a private copy of the repository and packs that with `npm pack`
 * (scripts ignored), then installs the tarball, with its runtime dependencies only, into a new
 * temporary application. Also links `@types/node`, which any TypeScript application on Node has,
 * for the consumer typecheck.
 */
export function installPacked(): PackedApp {
  const root = mkdtempSync(join(tmpdir(), 'breakwater-packed-'))
  const remove = (): void => rmSync(root, { recursive: true, force: true })
  try {
    const source = buildCopy(join(root, 'package'))
    const packed = run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', root], {
      cwd: source,
    })
    const [tarball] = JSON.parse(packed) as [{ filename: string; files: { path: string }[] }]
    const dir = join(root, 'app')
    const packageDir = join(dir, 'node_modules', packageJson.name)
    mkdirSync(packageDir, { recursive: true })
    run('tar', ['-xzf', join(root, tarball.filename), '-C', packageDir, '--strip-components=1'])
    for (const name of [...Object.keys(packageJson.dependencies), '@types/node']) {
      const link = join(dir, 'node_modules', name)
      mkdirSync(dirname(link), { recursive: true })
      symlinkSync(join(repoRoot, 'node_modules', name), link, 'dir')
    }
    writeFileSync(
      join(dir, 'package.json'),
      JSON.stringify({ name: 'packed-app', private: true, type: 'module' }),
    )
    const node = (args: readonly string[]): NodeRun => {
      const child = spawnSync(process.execPath, args, { cwd: dir, encoding: 'utf8' })
      return { status: child.status, stdout: child.stdout, stderr: child.stderr }
    }
    return {
      dir,
      packageDir,
      files: tarball.files.map((f) => f.path),
      node,
      script<T>(name: string, source: string): T {
        const file = join(dir, `${name}.mjs`)
        writeFileSync(file, source)
        const child = node([file])
        if (child.status !== 0) {
          throw new Error(`${name}.mjs exited with ${child.status}:\n${child.stderr}`)
        }
        const lines = child.stdout.trim().split('\n')
        return JSON.parse(lines[lines.length - 1] ?? '') as T
      },
      remove,
    }
  } catch (error) {
    remove()
    throw error
  }
}

/** What the copy leaves out: the build's output, dependencies, history and run-time leftovers. */
const notCopied = new Set(['dist', 'node_modules', '.git', '.breakwater', 'coverage', '.tmp'])

/**
 * Copies the repository into `dir` and runs its build script there. Packing the repository's
 * own dist/ raced any build running at the same time (another test run, an editor's watcher):
 * npm pack read files tsc was rewriting and the tarball held half a module. The copy also packs
 * what the sources are now, not what the last build left. Type errors are `npm run typecheck`'s
 * job, so each tsc runs with --noCheck (same output, checked identical with dist/, in half the
 * time).
 */
function buildCopy(dir: string): string {
  cpSync(repoRoot, dir, {
    recursive: true,
    filter: (path) => !notCopied.has(relative(repoRoot, path).split(sep)[0] ?? ''),
  })
  symlinkSync(join(repoRoot, 'node_modules'), join(dir, 'node_modules'), 'dir')
  const tsc = join(repoRoot, 'node_modules/typescript/bin/tsc')
  for (const step of (packageJson.scripts.build ?? '').split(' && ')) {
    const [command, ...args] = step.trim().split(/\s+/)
    // A build that is not tsc alone needs this copy to learn how to run it.
    if (command !== 'tsc') throw new Error(`the build script has a step other than tsc: ${step}`)
    run(process.execPath, [tsc, ...args, '--noCheck'], { cwd: dir })
  }
  return dir
}

function run(command: string, args: readonly string[], options: { cwd?: string } = {}): string {
  const child = spawnSync(command, args, { ...options, encoding: 'utf8' })
  if (child.status !== 0) {
    // tsc reports on stdout, npm and tar on stderr.
    const output = `${child.stdout}${child.stderr}`
    throw new Error(`${command} ${args.join(' ')} exited with ${child.status}:\n${output}`)
  }
  return child.stdout
}
