//! `filter` in Zig, a WASI command hook: pages failed operations. For a
//! post event whose payload has an `error`, it POSTs the payload to the
//! pager URL from its settings; every other event is skipped.
//!
//! The command ABI: the event arrives as JSON on stdin, the settings as JSON
//! in the WASMHOOKS_SETTINGS environment variable, and the outcome goes out
//! as JSON on stdout (nothing at all skips the event). The subscription is
//! in `filter.toml`'s `[subscription]` table.
const std = @import("std");

pub fn main(init: std.process.Init) !void {
    // One event per process: an arena freed at exit is all the memory
    // management needed.
    const arena = init.arena.allocator();
    const io = init.io;

    var out_buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writerStreaming(io, &out_buf);
    const out = &stdout.interface;
    defer out.flush() catch {};

    const settings_text = init.environ_map.get("WASMHOOKS_SETTINGS") orelse "{}";
    const settings = std.json.parseFromSliceLeaky(std.json.Value, arena, settings_text, .{}) catch
        return fail(out, "settings: not JSON");
    const url = field(settings, "url") orelse
        return fail(out, "settings: `url` (the pager's http(s) URL) is required");
    if (url != .string or !(std.mem.startsWith(u8, url.string, "http://") or
        std.mem.startsWith(u8, url.string, "https://")))
        return fail(out, "settings: `url` must be an http(s) URL");

    var in_buf: [4096]u8 = undefined;
    var stdin = std.Io.File.stdin().readerStreaming(io, &in_buf);
    const input = try stdin.interface.allocRemaining(arena, .unlimited);
    const event = std.json.parseFromSliceLeaky(std.json.Value, arena, input, .{}) catch
        return fail(out, "the event on stdin is not JSON");

    const phase = field(event, "phase") orelse return fail(out, "the event has no phase");
    if (phase != .string or !std.mem.eql(u8, phase.string, "post")) return;
    const payload = field(event, "payload") orelse return;
    const failure = field(payload, "error") orelse return;
    if (failure == .null) return;

    try std.json.Stringify.value(.{
        .deliveries = .{.{ .url = url.string, .body = payload }},
    }, .{}, out);
}

/// The member `name` of a JSON object, or null.
fn field(value: std.json.Value, name: []const u8) ?std.json.Value {
    return switch (value) {
        .object => |object| object.get(name),
        else => null,
    };
}

/// Reports a failure the command-ABI way: `{"error": message}` on stdout.
fn fail(out: *std.Io.Writer, message: []const u8) !void {
    try std.json.Stringify.value(.{ .@"error" = message }, .{}, out);
}
