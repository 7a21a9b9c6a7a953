#!/usr/bin/env node
// The `shadowmm` command. Each subcommand is one entry of COMMANDS (its options, usage and
// handler), so run/stress/explore/replay/oom-test each add an entry. Usage errors print what
// was wrong and a hint to --help, and exit 2; a subcommand's own exit code is 0 or 1.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { oomTestCommand, stressCommand, type CliCommand } from './stress_cmd.js';
import { listCommand, replayCommand, runCommand } from './scenario_cmds.js';
import { exploreCommand } from './explore.js';

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | undefined>;

interface Command {
  /** one line for the top-level --help */
  summary: string;
  /** argument synopsis after the command name */
  synopsis: string;
  /** option lines for the command's --help */
  details: string[];
  /** what else the command's --help says (exit codes) */
  notes: string[];
  options: Options;
  /** it takes positional arguments (a scenario name or file) */
  positionals?: boolean;
  run(values: Values, positionals: string[]): Promise<number>;
}

class UsageError extends Error {
  /** the command whose --help to point at, if the error is in its arguments */
  command?: string;
}

function usageError(message: string, command?: string): UsageError {
  const e = new UsageError(command ? `${command}: ${message}` : message);
  e.command = command;
  return e;
}

const SCHEDULERS = ['sim', 'threads', 'both'] as const;

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: 'boot a kernel and show both schedulers, lockdep and the deadlock report at work',
    synopsis: '[--scheduler sim|threads|both] [--seed N]',
    details: [
      '--scheduler sim|threads|both  sim: determinism, lockdep reports and a deadlock report (parts a-d);',
      '                              threads: the contention program on Piscina workers (part e);',
      '                              both (default): all five parts',
      '--seed N                      seed of the sim runs, a whole number 0..4294967295 (default 1)',
    ],
    notes: ['Exits 0 when every part behaved as expected (the planted problems were found), 1 otherwise.'],
    options: { scheduler: { type: 'string', default: 'both' }, seed: { type: 'string', default: '1' } },
    async run(v) {
      const scheduler = String(v.scheduler);
      if (!(SCHEDULERS as readonly string[]).includes(scheduler)) throw usageError(`--scheduler must be one of ${SCHEDULERS.join(', ')}, got '${scheduler}'`, 'demo');
      const seed = parseSeed(String(v.seed));
      const { runDemo } = await import('../run/demo.js');
      const parts = await runDemo({ scheduler: scheduler as (typeof SCHEDULERS)[number], seed });
      return parts.every((p) => p.ok) ? 0 : 1;
    },
  },
  stress: external('stress', stressCommand),
  'oom-test': external('oom-test', oomTestCommand),
  list: external('list', listCommand),
  run: external('run', runCommand),
  replay: external('replay', replayCommand),
  explore: external('explore', exploreCommand),
};

/** A command defined in its own file: its CliUsageError becomes this file's usage error. */
function external(name: string, c: CliCommand | Command): Command {
  return {
    ...c,
    run: (v, positionals) =>
      (c as Command).run(v as Values, positionals).catch((e: unknown) => {
        throw (e as { usage?: boolean })?.usage === true ? usageError((e as Error).message, name) : e;
      }),
  };
}

function parseSeed(s: string): number {
  if (!/^\d+$/.test(s) || Number(s) > 0xffffffff) throw usageError(`--seed must be a whole number from 0 to 4294967295, got '${s}'`, 'demo');
  return Number(s);
}

function packageVersion(): string {
  // dist/src/cli/main.js and src/cli/main.ts sit at different depths: walk up to package.json
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'shadowmm' && pkg.version) return pkg.version;
    }
    if (dirname(dir) === dir) return 'unknown';
  }
}

function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  return [
    'usage: shadowmm <command> [options]',
    '       shadowmm --help | --version',
    '',
    'An emulator of the Linux mm paths that GPU and RDMA mirroring drivers live beside.',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    "Run 'shadowmm <command> --help' for a command's options.",
  ].join('\n');
}

function commandHelp(name: string, c: Command): string {
  const options = [...c.details, '--help                        this text'].map((d) => `  ${d}`);
  return [`usage: shadowmm ${name} ${c.synopsis}`, '', c.summary, '', 'options:', ...options, '', ...c.notes].join('\n');
}

/** Turn a parseArgs error into one line naming the offending argument. */
function parseError(e: unknown, command?: string): UsageError {
  const err = e as { code?: string; message?: string };
  const msg = err.message ?? String(e);
  const quoted = /'([^' ]+)/.exec(msg)?.[1] ?? '?';
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return usageError(`unknown option '${quoted}'`, command);
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      // missing value, or one that starts with '-' (ambiguous: parseArgs wants --opt=-x)
      return usageError(/ambiguous/.test(msg) ? `option '${quoted}' needs a value (write ${quoted}=VALUE for one starting with '-')` : /argument missing/.test(msg) ? `option '${quoted}' needs a value` : msg.split('\n')[0], command);
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return usageError(`unexpected argument '${quoted}'`, command);
    default:
      return usageError(msg.split('\n')[0], command);
  }
}

async function main(argv: string[]): Promise<number> {
  const at = argv.findIndex((a) => !a.startsWith('-'));
  const globalArgs = at < 0 ? argv : argv.slice(0, at);
  let g: Values;
  try {
    g = parseArgs({ args: globalArgs, options: { help: { type: 'boolean', short: 'h' }, version: { type: 'boolean', short: 'V' } }, strict: true }).values;
  } catch (e) {
    throw parseError(e);
  }
  if (g.help) {
    process.stdout.write(mainHelp() + '\n');
    return 0;
  }
  if (g.version) {
    process.stdout.write(packageVersion() + '\n');
    return 0;
  }
  if (at < 0) throw usageError('no command given');
  const name = argv[at];
  const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) throw usageError(`unknown command '${name}' (commands: ${Object.keys(COMMANDS).join(', ')})`);
  let values: Values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: argv.slice(at + 1), options: { ...cmd.options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: cmd.positionals === true }));
  } catch (e) {
    throw parseError(e, name);
  }
  if (values.help) {
    process.stdout.write(commandHelp(name, cmd) + '\n');
    return 0;
  }
  return cmd.run(values, positionals);
}

// `shadowmm demo | head`: a reader that goes away ends the command quietly, as for any CLI
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE') throw e;
  process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    if (e instanceof Error && e.name === 'ScenarioError') {
      // a bad scenario file: its message names the file and the field
      process.stderr.write(`shadowmm: ${e.message}\n`);
      process.exitCode = 2;
    } else if (e instanceof UsageError) {
      process.stderr.write(`shadowmm: ${e.message}\nRun 'shadowmm ${e.command ? `${e.command} ` : ''}--help' for usage.\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`shadowmm: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    }
  },
);
