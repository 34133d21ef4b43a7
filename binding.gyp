{
  "targets": [
    {
      "target_name": "coriolis_native",
      "sources": [
        "src/native/addon.cc",
        "src/native/errors.cc",
        "src/native/reader.cc",
        "src/native/blockdev.cc",
        "src/native/veeamsnap.cc",
        "src/native/snapstore_pipe.cc",
        "src/native/process.cc",
        "src/native/blksnap.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-O2"],
      "cflags!": ["-fno-exceptions"]
    }
  ]
}
