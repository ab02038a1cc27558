//! The built-in type OIDs: scalar types and the element type of each built-in
//! array type (see [`TypeKind::builtin`]).

use super::TypeKind;
use crate::postgres::pgoutput::Oid;

pub(super) const BOX_OID: Oid = 603;

pub(super) fn builtin_scalar(oid: Oid) -> Option<TypeKind> {
    Some(match oid {
        16 => TypeKind::Bool,
        20 | 21 | 23 | 26 | 28 | 29 | 5069 => TypeKind::Integer,
        700 | 701 => TypeKind::Float,
        1700 => TypeKind::Numeric,
        114 | 3802 => TypeKind::Json,
        1082 => TypeKind::Date,
        1083 => TypeKind::Time,
        1266 => TypeKind::TimeTz,
        1114 => TypeKind::Timestamp,
        1184 => TypeKind::TimestampTz,
        1186 => TypeKind::Interval,
        17 => TypeKind::Bytea,
        // char, name, text, bpchar, varchar, uuid, money, network addresses,
        // xml, bit strings, pg_lsn, text search, jsonpath, geometry, vectors,
        // tid, reg* aliases, refcursor, snapshots, ranges and multiranges,
        // aclitem, unknown, pg_node_tree.
        18
        | 19
        | 25
        | 1042
        | 1043
        | 2950
        | 790
        | 869
        | 650
        | 829
        | 774
        | 142
        | 1560
        | 1562
        | 3220
        | 3614
        | 3642
        | 3615
        | 4072
        | 600
        | 601
        | 602
        | 603
        | 604
        | 628
        | 718
        | 22
        | 30
        | 27
        | 24
        | 2202..=2206
        | 4191
        | 4096
        | 4089
        | 3734
        | 3769
        | 1790
        | 2970
        | 5038
        | 3904
        | 3906
        | 3908
        | 3910
        | 3912
        | 3926
        | 4451
        | 4532..=4536
        | 1033
        | 705
        | 194 => TypeKind::Text,
        _ => return None,
    })
}

/// Element type of a built-in array type.
pub(super) fn builtin_array_element(oid: Oid) -> Option<Oid> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1021 => 700,
        1022 => 701,
        1027 => 604,
        1028 => 26,
        1034 => 1033,
        1040 => 829,
        1041 => 869,
        651 => 650,
        775 => 774,
        1115 => 1114,
        1182 => 1082,
        1183 => 1083,
        1185 => 1184,
        1187 => 1186,
        1231 => 1700,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        2201 => 1790,
        2207 => 2202,
        2208 => 2203,
        2209 => 2204,
        2210 => 2205,
        2211 => 2206,
        4192 => 4191,
        4097 => 4096,
        4090 => 4089,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3644 => 3642,
        3645 => 3615,
        3735 => 3734,
        3770 => 3769,
        3807 => 3802,
        199 => 114,
        143 => 142,
        4073 => 4072,
        2949 => 2970,
        5039 => 5038,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        6150 => 4451,
        6151 => 4532,
        6152 => 4533,
        6153 => 4534,
        6155 => 4535,
        6157 => 4536,
        719 => 718,
        791 => 790,
        629 => 628,
        271 => 5069,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::types::tests::{int_array, text_array};

    #[test]
    fn builtin_oids() {
        assert_eq!(TypeKind::builtin(16), Some(TypeKind::Bool));
        assert_eq!(TypeKind::builtin(20), Some(TypeKind::Integer));
        assert_eq!(TypeKind::builtin(701), Some(TypeKind::Float));
        assert_eq!(TypeKind::builtin(1700), Some(TypeKind::Numeric));
        assert_eq!(TypeKind::builtin(3802), Some(TypeKind::Json));
        assert_eq!(TypeKind::builtin(2950), Some(TypeKind::Text));
        assert_eq!(TypeKind::builtin(1184), Some(TypeKind::TimestampTz));
        assert_eq!(int_array(), TypeKind::array_of(TypeKind::Integer, b','));
        assert_eq!(text_array(), TypeKind::array_of(TypeKind::Text, b','));
        assert_eq!(
            TypeKind::builtin(3807),
            Some(TypeKind::array_of(TypeKind::Json, b','))
        );
        assert_eq!(
            TypeKind::builtin(1115),
            Some(TypeKind::array_of(TypeKind::Timestamp, b','))
        );
        assert_eq!(
            TypeKind::builtin(1020),
            Some(TypeKind::array_of(TypeKind::Text, b';'))
        );
        assert_eq!(TypeKind::builtin(99_999), None);
        assert_eq!(TypeKind::builtin_or_text(99_999), TypeKind::Text);
        for oid in 0..10_000 {
            if let Some(element) = builtin_array_element(oid) {
                assert!(builtin_scalar(element).is_some(), "{oid}");
                assert!(builtin_scalar(oid).is_none(), "{oid}");
            }
        }
    }
}
