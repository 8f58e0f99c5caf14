"""Digests of the IEEE P3109 working group's published value tables, to check decoding against them bit for bit.

Source: https://github.com/P3109/Public (commit 26df0d0, 28 June 2026, published with Interim Report v4.0),
``Value Tables/Hexadecimal/K{k}/P{p}/{signed,unsigned}/Binary{k}p{p}{s,u}{e,f}.csv``: one row per code point, its value as a C99 hex
float, ``Inf``, ``-Inf`` or ``NaN``. The tables are 70 MB for 3 <= k <= 15, so this module keeps, per format, the
first 16 hex digits of the SHA-256 of :func:`canonical_text` of its values: ``nan``, ``inf``, ``-inf`` or Python's
``float.hex`` of the value, for every code in order, comma-separated. Every value of these 410 formats is a float64
value, so the text is exact. ``BEYOND_FLOAT64`` lists the 32 formats of 3 <= k <= 15 whose tables hold values
beyond float64 (exponent fields wider than 11 bits); lpnum does not hold them.

``python tests/support/p3109_tables.py <checkout>/Value\\ Tables/Hexadecimal`` prints the digests of the CSV files
found below that folder, in this module's format.
"""

from __future__ import annotations

import csv
import hashlib
import math
import pathlib
import re
import sys

__all__ = ["DIGESTS", "BEYOND_FLOAT64", "canonical_text", "digest"]


def canonical_text(values) -> str:
  """The values of every code, in code order, as comma-separated ``nan``/``inf``/``-inf``/``float.hex``."""
  def one(v: float) -> str:
    if math.isnan(v):
      return "nan"
    if math.isinf(v):
      return "inf" if v > 0 else "-inf"
    return float(v).hex()
  return ",".join(one(float(v)) for v in values)


def digest(values) -> str:
  """First 16 hex digits of the SHA-256 of :func:`canonical_text`."""
  return hashlib.sha256(canonical_text(values).encode()).hexdigest()[:16]


def _csv_values(path: pathlib.Path) -> list[float] | None:
  """The values of a published table, or None if one is beyond float64."""
  with open(path) as f:
    rows = list(csv.reader(f))[1:]
  values = []
  for row in rows:
    text = row[1].strip()
    if text in ("NaN", "Inf", "-Inf"):
      values.append({"NaN": math.nan, "Inf": math.inf, "-Inf": -math.inf}[text])
      continue
    exponent = int(re.search(r"p([+-]\d+)$", text).group(1))
    if not -1080 <= exponent <= 1023:
      return None
    values.append(float.fromhex(text))
  return values


def _main(folder: str) -> None:
  for path in sorted(pathlib.Path(folder).rglob("Binary*.csv")):
    values = _csv_values(path)
    name = "b" + path.stem[1:]
    print(f'"{name}": ' + ("None" if values is None else f'"{digest(values)}"') + ",")


DIGESTS = {
    "binary3p1se": "9a119b3d156cb14c", "binary3p1sf": "d1c340bc9282e27b", "binary3p1ue": "e02a47d0768b2728",
    "binary3p1uf": "ea1061389197ff37", "binary3p2se": "9a119b3d156cb14c", "binary3p2sf": "822dec47304cfe68",
    "binary3p2ue": "7a75af271f06f134", "binary3p2uf": "b23697008d8b95b3", "binary3p3ue": "a0f64fa997ef0383",
    "binary3p3uf": "793e579302c91fc3", "binary4p1se": "ba300ecb9232636b", "binary4p1sf": "f0767b686e8bbdb3",
    "binary4p1ue": "4162a381443c79c4", "binary4p1uf": "0137d52733fadeea", "binary4p2se": "a2156c9e3111f1c3",
    "binary4p2sf": "0d2be65ce5190653", "binary4p2ue": "9d5714e69de26238", "binary4p2uf": "83605b703ec2b410",
    "binary4p3se": "fc4d56ba14e47e05", "binary4p3sf": "22465b72acb5693f", "binary4p3ue": "2de78acfa9c3d238",
    "binary4p3uf": "284aeba7be6bdde3", "binary4p4ue": "e24e2e36aff295ef", "binary4p4uf": "933cc64cef8f9026",
    "binary5p1se": "75418be1d3222ccf", "binary5p1sf": "4d7e1fd622058061", "binary5p1ue": "107bd10c134a4a58",
    "binary5p1uf": "ee239d9e6adbab8f", "binary5p2se": "b49e881f75e37845", "binary5p2sf": "dedd3e97aa4d36c6",
    "binary5p2ue": "55d11b3ba0fe6c26", "binary5p2uf": "fdd9ce467351b88d", "binary5p3se": "ebcab632ded83dea",
    "binary5p3sf": "b17c23485f39ffa2", "binary5p3ue": "f84190bc50e5027c", "binary5p3uf": "ab558e316c8613c3",
    "binary5p4se": "b8137fb3bba9d6ef", "binary5p4sf": "624954966352a9dd", "binary5p4ue": "ccd0185b420aaf5a",
    "binary5p4uf": "9d67c996ce890107", "binary5p5ue": "fdab1fa14517ad6c", "binary5p5uf": "ee173dabc58bdd4a",
    "binary6p1se": "60fb1bf1a49e5ca3", "binary6p1sf": "a06762a9d7976de5", "binary6p1ue": "2c97fe049c3db9e9",
    "binary6p1uf": "d2f8b207aff068cf", "binary6p2se": "20f34038d375c4ea", "binary6p2sf": "79642e3aa3633b90",
    "binary6p2ue": "096a3fabc193621c", "binary6p2uf": "dbc64039c68b7790", "binary6p3se": "889d3b0590befb77",
    "binary6p3sf": "915225ba49995a29", "binary6p3ue": "d6da9e877a04a09c", "binary6p3uf": "8522e16d10e0df25",
    "binary6p4se": "9c0c278344a8d93c", "binary6p4sf": "525f70e2151b9f67", "binary6p4ue": "2598551bf2b0a726",
    "binary6p4uf": "46c3b6c8fe2b6e09", "binary6p5se": "2b85b3620cde5451", "binary6p5sf": "f43e00b527cc2370",
    "binary6p5ue": "51eaeccd25dd7946", "binary6p5uf": "bffa4ef457bdea9b", "binary6p6ue": "9a2aee3c49230382",
    "binary6p6uf": "96c876771b1a54a4", "binary7p1se": "7430f850d885aab5", "binary7p1sf": "a80f70dc35e3fd3b",
    "binary7p1ue": "afe839ddf6cdf832", "binary7p1uf": "7e8a47486aacdc02", "binary7p2se": "f552118477b3e729",
    "binary7p2sf": "2239a6e99f0089f0", "binary7p2ue": "0ad03b4dc3e847fc", "binary7p2uf": "4d5edfc222b5f003",
    "binary7p3se": "729c708fa8791a5a", "binary7p3sf": "ae70a304e5f1a587", "binary7p3ue": "90450320a28829ea",
    "binary7p3uf": "17eb4ecd2ca6498c", "binary7p4se": "435946a889e51040", "binary7p4sf": "2284eab83f7399e9",
    "binary7p4ue": "91a92646fa2821b1", "binary7p4uf": "e8b9c2e1318c0dc4", "binary7p5se": "84a0471dd3d5952d",
    "binary7p5sf": "a71e8fc7a49c061e", "binary7p5ue": "0c732a2dbe99dc79", "binary7p5uf": "6752a46234134f16",
    "binary7p6se": "b517bb08d052a9f4", "binary7p6sf": "db64bc08e09e8b05", "binary7p6ue": "63310d6091f8a66f",
    "binary7p6uf": "6d8aa1a19ed9172f", "binary7p7ue": "3367c2084a71f549", "binary7p7uf": "0572f032696b296d",
    "binary8p1se": "48147aa480ec3cfa", "binary8p1sf": "4b18bb9d7e791fe2", "binary8p1ue": "fc985432e76b7679",
    "binary8p1uf": "0d84cec3ec00b826", "binary8p2se": "bb13aa6c290a8ae8", "binary8p2sf": "3af7a2d2eaf86515",
    "binary8p2ue": "6fe5daae0e58dff3", "binary8p2uf": "34abd6b24e7ac166", "binary8p3se": "abe3d1041a3989e9",
    "binary8p3sf": "62b46fe752325ef3", "binary8p3ue": "f5202d9708b06f35", "binary8p3uf": "4c6c14b1c25b44a4",
    "binary8p4se": "f426a70342b6d32f", "binary8p4sf": "d8f664596c1070ae", "binary8p4ue": "b226f6a24dd4021e",
    "binary8p4uf": "c892c15992eaae57", "binary8p5se": "8cdb3af4ab3cf735", "binary8p5sf": "aad9134be312de2c",
    "binary8p5ue": "971a7cab18000e8c", "binary8p5uf": "5932dd966c37fde9", "binary8p6se": "ffe3b699bbaed2dd",
    "binary8p6sf": "e3c80a51f85e54b6", "binary8p6ue": "28387c7eb926a31e", "binary8p6uf": "e42f7cead42cf0dc",
    "binary8p7se": "855ec0bd91efac88", "binary8p7sf": "0225b4ee78b2c675", "binary8p7ue": "07b6a8fd7f7633a2",
    "binary8p7uf": "b50dc986e441497b", "binary8p8ue": "900554bca78c304e", "binary8p8uf": "6d2be1d0e4058639",
    "binary9p1se": "93fb8bc767d88449", "binary9p1sf": "4d977e2106a38c2e", "binary9p1ue": "8826b3a44eb12c86",
    "binary9p1uf": "0a5b16aedc90b205", "binary9p2se": "9ddd4df1387a5f61", "binary9p2sf": "a91a3dcb29352ad8",
    "binary9p2ue": "1d36904c3f88d569", "binary9p2uf": "3f1a3b6da28cb71e", "binary9p3se": "617210a67a6eebf8",
    "binary9p3sf": "6bc15ca76ac2d193", "binary9p3ue": "6783bd93b7df72e0", "binary9p3uf": "aefd93536ddd4df3",
    "binary9p4se": "5e22429da71945fc", "binary9p4sf": "54acb6fd5df8c3cc", "binary9p4ue": "79de4158a11ab7ac",
    "binary9p4uf": "365615bbe6468a85", "binary9p5se": "c11ade37ecf868eb", "binary9p5sf": "fbb02063cb2b67f1",
    "binary9p5ue": "e64ea89e60a6ce09", "binary9p5uf": "f4f63e9c4571a076", "binary9p6se": "cf2e38c9a9fad9c2",
    "binary9p6sf": "642f3713d53fe59c", "binary9p6ue": "61cdf5a1a3939071", "binary9p6uf": "335c98274db27b65",
    "binary9p7se": "9087cfb628a91a16", "binary9p7sf": "5c75ff36f3eb1532", "binary9p7ue": "e17d10bdac77dd55",
    "binary9p7uf": "87c7f23779f0ebc6", "binary9p8se": "98f50177f1b9fbbf", "binary9p8sf": "3477db49ffaa6739",
    "binary9p8ue": "5f29006f8d9dca02", "binary9p8uf": "ab55d454e94a8506", "binary9p9ue": "3a64ace3be27bc58",
    "binary9p9uf": "ce92408470a1c75c", "binary10p1se": "d281fd6abb3b5acb", "binary10p1sf": "61bbc3e5de191026",
    "binary10p1ue": "a12cfa10ba66a39a", "binary10p1uf": "1eb07788df1400f5", "binary10p2se": "e21e04faac04f234",
    "binary10p2sf": "edc374b0c2dea7bb", "binary10p2ue": "30eedd73a64536c6", "binary10p2uf": "fb0a32a9af8096d2",
    "binary10p3se": "336732b420d0d7a7", "binary10p3sf": "9f67cb02905930a9", "binary10p3ue": "aebd6c563ed14e28",
    "binary10p3uf": "1ce924bd04808c39", "binary10p4se": "a246a7a3b8009cf7", "binary10p4sf": "05f3318cc9a3c363",
    "binary10p4ue": "6a15a8de797c24b5", "binary10p4uf": "65fa10c719f090da", "binary10p5se": "084a295bee384faf",
    "binary10p5sf": "73377e0c1e2f16ee", "binary10p5ue": "5177dbbe39237776", "binary10p5uf": "3acf19e3cf506524",
    "binary10p6se": "a45ee4badc8918f1", "binary10p6sf": "0f10da177a6aa990", "binary10p6ue": "b46cf01e548b5939",
    "binary10p6uf": "125e41ae368ae7db", "binary10p7se": "ed08f62470f8fe1d", "binary10p7sf": "f85f4c0743f7a9c1",
    "binary10p7ue": "5aa3cc29d4f0687d", "binary10p7uf": "1ab48dde81aebde7", "binary10p8se": "220e7bbaf6d58ed1",
    "binary10p8sf": "94f06cfab1072b7e", "binary10p8ue": "6573d2535140d246", "binary10p8uf": "dce182ba06032675",
    "binary10p9se": "ee715515b81fe954", "binary10p9sf": "72cf46702ebfcb22", "binary10p9ue": "88e014981b0e4103",
    "binary10p9uf": "0d5e15b8395f8a3f", "binary10p10ue": "2075cd6edbff36af", "binary10p10uf": "421ff50cb9afb186",
    "binary11p1se": "06fa484c5ed49437", "binary11p1sf": "31a483208b1e9a5a", "binary11p1ue": "0a340b2559c91bc8",
    "binary11p1uf": "bf53eeadf6fc9287", "binary11p2se": "d3202212e62f80b4", "binary11p2sf": "77f3b81047103e69",
    "binary11p2ue": "05f993411b7087f2", "binary11p2uf": "cc7d5f85654ae0eb", "binary11p3se": "821e0440eb4209dd",
    "binary11p3sf": "7d58a00fac22f9dc", "binary11p3ue": "09902bce51b35618", "binary11p3uf": "5d697d8d519899a7",
    "binary11p4se": "747de95046fb1b68", "binary11p4sf": "d8f9ffb1ef7f19e6", "binary11p4ue": "34ee76729869e03c",
    "binary11p4uf": "844c10a999fe0b62", "binary11p5se": "618edd744553af28", "binary11p5sf": "a59e14eb34ed3812",
    "binary11p5ue": "4e6e3891fee43667", "binary11p5uf": "78e3db51205a6b27", "binary11p6se": "41bed4664283abac",
    "binary11p6sf": "edc1360f157c3de1", "binary11p6ue": "f5c770785b40ad30", "binary11p6uf": "4e76e3b29d87f965",
    "binary11p7se": "bcc058cd16797e91", "binary11p7sf": "3ea5a456122bc559", "binary11p7ue": "583b938b796830ae",
    "binary11p7uf": "2512ca7234fdac7b", "binary11p8se": "47fd0e0710327a83", "binary11p8sf": "bd0c68aeaba8788f",
    "binary11p8ue": "f9a21118b745f95c", "binary11p8uf": "2f257f8597d9ece2", "binary11p9se": "403c562af1d835b6",
    "binary11p9sf": "86a678e63b78d50f", "binary11p9ue": "115cf834941dcced", "binary11p9uf": "35dbe876697f5ec4",
    "binary11p10se": "99eb30d525926933", "binary11p10sf": "690e0e5e054d445a", "binary11p10ue": "3b710f6fbb832d2b",
    "binary11p10uf": "3b21b4ef0eb80b92", "binary11p11ue": "cb339239b24af735", "binary11p11uf": "9c95cdf142dbc319",
    "binary12p1se": "6376444f8f8d68e2", "binary12p1sf": "b3437e80241ecd16", "binary12p2se": "5246aad108494979",
    "binary12p2sf": "13df7a42244d1bab", "binary12p2ue": "8fd56ff7cd3500b3", "binary12p2uf": "3a9cdd6a5fc025a5",
    "binary12p3se": "6a8fb27a5d5f9fc8", "binary12p3sf": "080a9f4180c638ed", "binary12p3ue": "72b576d776ad5600",
    "binary12p3uf": "a4ecb6e97784348f", "binary12p4se": "22f184b06de8a0e8", "binary12p4sf": "e6ae5dacba902ea2",
    "binary12p4ue": "b0d65d6f8f6e5afa", "binary12p4uf": "6bb495809e281f08", "binary12p5se": "f39d5db1efef6cc8",
    "binary12p5sf": "50d7531c401b5174", "binary12p5ue": "0d3af5e0330f487e", "binary12p5uf": "101a2b25c14f0b86",
    "binary12p6se": "2f4fe0dffda60330", "binary12p6sf": "9822310dc58cd191", "binary12p6ue": "6ec326d55f8cbdc5",
    "binary12p6uf": "11f9f35f8d0c537e", "binary12p7se": "00750ca906c764d9", "binary12p7sf": "56e3e87bf5dc02aa",
    "binary12p7ue": "a37fa78c3ae94468", "binary12p7uf": "8eda05db644faa8d", "binary12p8se": "6092a94a47e8ea8a",
    "binary12p8sf": "e84c97e8aa415940", "binary12p8ue": "ff19329bd83a1195", "binary12p8uf": "6c568b7bc6b3c4bc",
    "binary12p9se": "74e5f1f9946bf667", "binary12p9sf": "552526195d76a7e7", "binary12p9ue": "049a44d6fcc23d83",
    "binary12p9uf": "a333b8779a5c1564", "binary12p10se": "e173fc21f0dce444", "binary12p10sf": "9f0aabd07079fdf1",
    "binary12p10ue": "26d386d23bc1b3d4", "binary12p10uf": "dd938516211a90fc", "binary12p11se": "c9888732cac456e3",
    "binary12p11sf": "9f52cbe4e5db200e", "binary12p11ue": "24890446415ee25c", "binary12p11uf": "418b5f2eed222e9e",
    "binary12p12ue": "18485b384a13cf3a", "binary12p12uf": "59e7830aeb67a8fd", "binary13p2se": "87c54a4637a7eab5",
    "binary13p2sf": "2a799488df945adc", "binary13p3se": "ec02669004fc5900", "binary13p3sf": "57500e947d5e7013",
    "binary13p3ue": "4cf52c848d29b8cd", "binary13p3uf": "09df141093f5aba6", "binary13p4se": "e653bf95ab91ab6f",
    "binary13p4sf": "c38304171003f036", "binary13p4ue": "778b411fd69ff26d", "binary13p4uf": "42be29358b4cb963",
    "binary13p5se": "270ee1ae1a45a7f1", "binary13p5sf": "d95c3e091f42ac65", "binary13p5ue": "f3a024355bc78847",
    "binary13p5uf": "ad9da44eeed30faf", "binary13p6se": "7592c5e739380171", "binary13p6sf": "0d4adf8ef6baf926",
    "binary13p6ue": "ddfcc36432fef2db", "binary13p6uf": "bdbbfebceb70eeb0", "binary13p7se": "4556be5701b7e097",
    "binary13p7sf": "f9e32beb9f681783", "binary13p7ue": "2f203cb2f7c47a67", "binary13p7uf": "38562a1138b91a4e",
    "binary13p8se": "f7c14ef9f537c891", "binary13p8sf": "906e8bb082deb8e9", "binary13p8ue": "b2de90713c1a0da8",
    "binary13p8uf": "41be49fd2841dc8f", "binary13p9se": "c60e64ff3db91103", "binary13p9sf": "fb81bd1fe45b54b7",
    "binary13p9ue": "459e15d141bb6d2c", "binary13p9uf": "cda63608e6f41a9e", "binary13p10se": "e06e0583a8c4f1e6",
    "binary13p10sf": "ecbc7768305ec859", "binary13p10ue": "9b6057ce0be98a8a", "binary13p10uf": "0862feac1760433c",
    "binary13p11se": "e03f397472a2c8fc", "binary13p11sf": "264a694d9d0ca56f", "binary13p11ue": "72fa91574caa9fb4",
    "binary13p11uf": "7c132ea32491fa93", "binary13p12se": "f8453f13695cacc2", "binary13p12sf": "cc2f691801e8c374",
    "binary13p12ue": "9adc0cec444aab62", "binary13p12uf": "cde1d06aafa6b99e", "binary13p13ue": "6a857efa50a162c0",
    "binary13p13uf": "d8b76789f87fa175", "binary14p3se": "7a98560dc6a4f8af", "binary14p3sf": "adc57f1e32db05e8",
    "binary14p4se": "a2bd9f2e1230a857", "binary14p4sf": "de1311f4053305ee", "binary14p4ue": "fdbf486db4f55b5e",
    "binary14p4uf": "8e88e5d481beebff", "binary14p5se": "17f9aed44578e6b9", "binary14p5sf": "11fc878e5963e246",
    "binary14p5ue": "af6566d817ad6049", "binary14p5uf": "13f8d21b90db7dcc", "binary14p6se": "96058e17cc6459b3",
    "binary14p6sf": "79df87d76d31f16d", "binary14p6ue": "7af04bcfaf218cce", "binary14p6uf": "31c8425b6325e09e",
    "binary14p7se": "324e17e4b673afd7", "binary14p7sf": "9e4d30b3a0cc249f", "binary14p7ue": "bd620f3f481faa25",
    "binary14p7uf": "02c2c80086fc7783", "binary14p8se": "bf29b9a9aa01ccdc", "binary14p8sf": "25a26630bce6432c",
    "binary14p8ue": "6ff4c4a8b721c4a4", "binary14p8uf": "c839fa846d807cde", "binary14p9se": "7df12916930c5265",
    "binary14p9sf": "313105c408939b73", "binary14p9ue": "285f385a0162b5db", "binary14p9uf": "75fcfadc38a459a0",
    "binary14p10se": "fe84fca202e11e6e", "binary14p10sf": "e1949f400b2ea1d9", "binary14p10ue": "dafcf9696ffa7586",
    "binary14p10uf": "d956ca49656a7612", "binary14p11se": "9b207122a8e4871a", "binary14p11sf": "65cf3f4ec71d3c77",
    "binary14p11ue": "7fa6809c2e05d337", "binary14p11uf": "6a171e30ab3ff400", "binary14p12se": "fea8ea0a42f6bb30",
    "binary14p12sf": "58331d924f8e5291", "binary14p12ue": "2d7f289222e8fe13", "binary14p12uf": "030e496fc41da32b",
    "binary14p13se": "ecd05fab2b34b5a1", "binary14p13sf": "75ceae225803025f", "binary14p13ue": "933d7dfc60eed234",
    "binary14p13uf": "6960ddec5a75c5ce", "binary14p14ue": "bdcede201767cbf2", "binary14p14uf": "14a07a7b0b3dc462",
    "binary15p4se": "fc965b7caf8a1773", "binary15p4sf": "b979cc725c97329e", "binary15p5se": "d6a8582fa7eda7c0",
    "binary15p5sf": "2660d10804fa25ed", "binary15p5ue": "7882c9886fcb566b", "binary15p5uf": "e54aff8df2b756b2",
    "binary15p6se": "6a30ce1aa5d5183a", "binary15p6sf": "363d481f075710f4", "binary15p6ue": "8ebb34a6259bf312",
    "binary15p6uf": "f20d0562aeec12cd", "binary15p7se": "25cfde44692f14bf", "binary15p7sf": "3b70fe38e4a24779",
    "binary15p7ue": "6d50b63179449b98", "binary15p7uf": "faa389c784d555b8", "binary15p8se": "5a700e824550876b",
    "binary15p8sf": "88ca52a67634a8f5", "binary15p8ue": "85274620283f04de", "binary15p8uf": "51c303c8697ba032",
    "binary15p9se": "5de74ed510efb0cb", "binary15p9sf": "1fef15e96010ab89", "binary15p9ue": "19d885fc81ef62f6",
    "binary15p9uf": "e452e61e117d04fd", "binary15p10se": "e6d25a3e03af5a3a", "binary15p10sf": "21720d54cefde864",
    "binary15p10ue": "e5cd6a1bd59e342d", "binary15p10uf": "5d764b15d581501a", "binary15p11se": "7014680763ffa423",
    "binary15p11sf": "c1c2adae2d9956fb", "binary15p11ue": "565014831e1415b9", "binary15p11uf": "0c1411bf6c0fa339",
    "binary15p12se": "bdf31b8cedc54316", "binary15p12sf": "b7ce9c4c7a1cf6e5", "binary15p12ue": "711aaa649b24cdcf",
    "binary15p12uf": "bd688380ae2e53b0", "binary15p13se": "a2ec9597f537124c", "binary15p13sf": "e21984426ff701fa",
    "binary15p13ue": "0448a7f5dedc5acd", "binary15p13uf": "04e0ef939c91ef3a", "binary15p14se": "6d8d73297ca6794f",
    "binary15p14sf": "eb7c6be7bfc67125", "binary15p14ue": "0fe3251f28e352de", "binary15p14uf": "390f609317a1a01a",
    "binary15p15ue": "0d5ded29fe38ffbc", "binary15p15uf": "101125d48cbe1e79",
}


BEYOND_FLOAT64 = (
    "binary12p1ue", "binary12p1uf", "binary13p1se", "binary13p1sf", "binary13p1ue", "binary13p1uf", "binary13p2ue",
    "binary13p2uf", "binary14p1se", "binary14p1sf", "binary14p1ue", "binary14p1uf", "binary14p2se", "binary14p2sf",
    "binary14p2ue", "binary14p2uf", "binary14p3ue", "binary14p3uf", "binary15p1se", "binary15p1sf", "binary15p1ue",
    "binary15p1uf", "binary15p2se", "binary15p2sf", "binary15p2ue", "binary15p2uf", "binary15p3se", "binary15p3sf",
    "binary15p3ue", "binary15p3uf", "binary15p4ue", "binary15p4uf",
)


if __name__ == "__main__":
  _main(sys.argv[1])
